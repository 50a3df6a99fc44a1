"""The pipeline's stages: index (Spark), train (PyTorch), publish (DuckDB), and what they stand on.

Each stage is a subpackage with a config, a pure core, an I/O edge and an
entry point ``run(config)``; importing this package pulls in no heavy library.
Dependencies point down (tests/test_boundaries.py checks it):

    stages.py, policy.py, markers.py, config.py   what flows and the CLI call: the stages over one config
    index/  train/  publish/                      the jobs; none imports another
    synthetic/                                    generated inputs, called by the index stage (not the job)
    store/                                        store access, shared by publish/ and the read client
    synthetic/config.py                           the generators' settings, named by index/config.py
    common/                                       config base, hashing, atomic files, locks, signals
"""
