"""Benchmarks and device checks of electra_fn (``python -m benchmarks.<name>``).

Command-line scripts: ``throughput``, ``gpu_checks``, ``triton_interpret`` (the GPU checks
with Inductor's Triton kernels interpreted on a CPU), ``compile_time``, ``data_parallel``,
``data_pipeline``, ``fault_injection``, ``finetune_compile``, ``finetune_glue_timing``,
``finetune_seeds``, ``glue_padding``, ``rtd_reference``, ``variant_steps``. Modules they share:
``hf_peer`` (the Hugging Face training step measured against ours) and ``workload`` (the
synthetic batch).
"""
