"""LiteLLM's rules: what a budget error is, who may see which model, the catalog, the admin look-ups."""
