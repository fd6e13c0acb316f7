"""Evaluation: batched generation, VQA accuracy, caption F1, referring Prec@0.5, reports."""

from mmcore.eval._evaluate import ANSWER_FORMATS, EvalRecord, evaluate, summarize, write_report
from mmcore.eval._metrics import box_iou, normalize_answer, token_f1, vqa_match
from mmcore.eval._run import evaluate_run

__all__ = ["ANSWER_FORMATS", "EvalRecord", "box_iou", "evaluate", "evaluate_run", "normalize_answer", "summarize",
           "token_f1", "vqa_match", "write_report"]
