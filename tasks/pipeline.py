"""The stages of a pruning run, in the order a run reaches them.

flows/graph.py wires them; check_inputs runs their pre-flight checks in this order.
"""

from tasks.dataset import prepare_dataset
from tasks.evaluate import evaluate_baseline, evaluate_pruned
from tasks.export import export_baseline, export_pruned
from tasks.interpreter import evaluate_baseline_exports, evaluate_pruned_exports
from tasks.latency import measure_latency
from tasks.prune import prune_train, strip
from tasks.qat import quantize_train
from tasks.sanity import sanity_check
from tasks.size import measure_size

STAGES = (
    prepare_dataset, evaluate_baseline, export_baseline, evaluate_baseline_exports,
    prune_train, strip, sanity_check, measure_size, evaluate_pruned,
    quantize_train, export_pruned, evaluate_pruned_exports, measure_latency,
)
