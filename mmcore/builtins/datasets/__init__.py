"""Built-in dataset plugins: `synthetic-shapes` and `llava-json`."""
