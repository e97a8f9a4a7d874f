"""Research tools: router comparison from fairseq logs (`compare`), expert-load heatmaps and
collapse detection (`expert_usage`), router-gradient fidelity (`gradient_fidelity`)."""
