"""Reporting: result tables (`tables`), PNG plots (`plots`), bench sweeps with their Markdown
report (`report`)."""
