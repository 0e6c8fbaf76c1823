"""What the stages use: data, models, schedules, the layer plan, sparsity, conversions, runtimes, timing, and every stage's artifact type."""
