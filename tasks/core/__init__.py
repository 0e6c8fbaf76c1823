"""The stage machinery, at the bottom: Stage and its keys, the artifact store, files, the one exception type, the log, the output layout, the one TensorFlow import."""
