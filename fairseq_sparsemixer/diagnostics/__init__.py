"""Research tools, on top of the rest of the package (nothing below imports them): router
comparison from fairseq logs (`compare`), expert-load heatmaps and collapse detection in logs
(`expert_usage`), router-gradient fidelity (`gradient_fidelity`), host syncs and op counts
(`host_syncs`), where an update's time goes (`profile_train`), and the layer, router and model
speed benchmarks (`benchmark`, run as scripts/benchmark.py)."""
