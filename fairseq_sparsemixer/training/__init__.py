"""Training-time parts of the plugin: the expert-collapse warning that the criterion raises
(`collapse`)."""
