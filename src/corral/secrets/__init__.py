"""Secrets: the values corral must never write down or show a model, and their placeholders."""

from corral.secrets.redact import Redactor, placeholder, secret

__all__ = ["Redactor", "placeholder", "secret"]
