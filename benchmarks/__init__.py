"""Benchmarks and device checks of electra_fn (``python -m benchmarks.<name>``).

Command-line scripts: ``throughput``, ``gpu_checks``, ``compile_time``, ``data_pipeline``,
``finetune_compile``, ``finetune_glue_timing``, ``rtd_reference``. Modules they share:
``hf_peer`` (the Hugging Face training step measured against ours) and ``workload`` (the
synthetic batch).
"""
