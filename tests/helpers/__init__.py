"""What the tests share, one module per subject: data, models, the graph, Prefect queries,
disks, the command, and polling."""
