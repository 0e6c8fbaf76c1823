"""The stages of a pruning run, in the order a run reaches them.

flows/graph.py wires them; check_inputs runs their pre-flight checks in this order.
"""

from pruneflow.tasks.stages.evaluate import evaluate_baseline, evaluate_pruned
from pruneflow.tasks.stages.evaluate_exports import evaluate_baseline_exports, evaluate_pruned_exports
from pruneflow.tasks.stages.export_fallback import export_fallback_pruned
from pruneflow.tasks.stages.export_keras3 import export_keras3_baseline, export_keras3_pruned
from pruneflow.tasks.stages.export_onnx import export_onnx_baseline, export_onnx_pruned
from pruneflow.tasks.stages.export_tflite import export_baseline, export_pruned
from pruneflow.tasks.stages.measure_latency import measure_latency
from pruneflow.tasks.stages.measure_size import measure_size
from pruneflow.tasks.stages.prepare_dataset import prepare_dataset
from pruneflow.tasks.stages.prune_channels import prune_channels
from pruneflow.tasks.stages.prune_train import prune_train
from pruneflow.tasks.stages.quantization_error import quantization_error
from pruneflow.tasks.stages.quantize_train import quantize_train
from pruneflow.tasks.stages.sanity_check import sanity_check
from pruneflow.tasks.stages.strip import strip
from pruneflow.tasks.stages.translate_baseline import translate_baseline

STAGES = (
    prepare_dataset, translate_baseline, evaluate_baseline, export_baseline, export_onnx_baseline,
    export_keras3_baseline, evaluate_baseline_exports, prune_channels, prune_train, strip, sanity_check, measure_size,
    evaluate_pruned, quantize_train, export_pruned, quantization_error, export_fallback_pruned,
    export_onnx_pruned, export_keras3_pruned,
    evaluate_pruned_exports, measure_latency,
)

# Stages the graph runs only for some baselines: the translation, for one that Keras 3 wrote.
KERAS3_ONLY = (translate_baseline,)
# Stages the graph runs only for some configs: channel pruning, for one with a channel_pruning section.
CHANNELS_ONLY = (prune_channels,)
