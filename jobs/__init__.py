"""The pipeline's stages: index (Spark), train (PyTorch), publish (DuckDB).

Each stage is a subpackage with a config, a pure core, an I/O edge and an
entry point ``run(config)``; importing this package pulls in no heavy library.
"""
