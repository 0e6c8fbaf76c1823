"""The output root's layout: each run's folder is its own."""

from pruneflow.tasks.core.layout import OutputLayout


def test_a_flow_run_run_again_within_the_same_second_gets_a_folder_of_its_own(tmp_path):
    layout = OutputLayout(root=tmp_path)
    folders = [layout.new_run_dir("same-name") for _ in range(3)]  # well within one second
    assert len(set(folders)) == 3 and all(folder.is_dir() for folder in folders)
    by_second = {}
    for folder in folders:
        stamp, name = folder.name.split("-", 1)
        by_second.setdefault(stamp, []).append(name)
    for names in by_second.values():  # within one second: the name, then -2, -3
        assert names == ["same-name", "same-name-2", "same-name-3"][: len(names)]
