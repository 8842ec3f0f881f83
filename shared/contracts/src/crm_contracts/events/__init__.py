"""Event data models, one module per owning service."""
