"""Evaluation: answer manifest questions by generation and score them."""

from anymodal.evaluate.qa import evaluate_manifest, evaluate_records, format_table, normalize_answer

__all__ = ["evaluate_manifest", "evaluate_records", "format_table", "normalize_answer"]
