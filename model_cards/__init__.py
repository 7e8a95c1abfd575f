"""Model card templates (Jinja2, for `huggingface_hub.ModelCard.from_template`), shipped as package data."""
