"""The docs stay true to the code: the config reference is regenerated, and no link points nowhere."""

import re
import runpy
from pathlib import Path

REPO = Path(__file__).parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_configuration_reference_is_generated_from_the_current_config_model():
    generator = runpy.run_path(str(REPO / "docs" / "gen_configuration.py"))
    assert (REPO / "docs" / "configuration.md").read_text() == generator["render"](), (
        "docs/configuration.md is stale: run `make docs` and commit it"
    )


def test_every_field_of_the_config_is_in_the_reference():
    from pruneflow.tasks.specs.config import RunConfig

    text = (REPO / "docs" / "configuration.md").read_text()

    def fields(model, prefix=""):
        for name, info in model.model_fields.items():
            options = getattr(info.annotation, "__args__", None) or (info.annotation,)
            sections = [option for option in options if isinstance(option, type) and hasattr(option, "model_fields")]
            if sections:
                for section in sections:
                    yield from fields(section, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}"

    missing = [name for name in fields(RunConfig) if f"`{name}`" not in text]
    assert missing == []


def test_links_between_the_docs_lead_somewhere():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            path, _, fragment = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target}")
            elif fragment and file.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", file.read_text(), flags=re.MULTILINE)
                if fragment not in {anchor(heading) for heading in headings}:
                    broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []
