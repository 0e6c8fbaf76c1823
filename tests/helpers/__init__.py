"""What the tests share, one module per subject: data, models, the graph, Prefect queries,
disks, the command, polling, and the folders a test session shares."""
