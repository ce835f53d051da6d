"""Distillation between a teacher and a student whose tokenizers differ."""
