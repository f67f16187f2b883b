"""Judge-based benchmarks: one module per benchmark."""
