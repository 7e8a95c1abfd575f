"""Model cards: the Jinja2 template (package data, for `huggingface_hub.ModelCard.from_template`) and `card.py`,
which renders it for a training output folder."""
