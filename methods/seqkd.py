"""SeqKD (Kim & Rush 2016, arXiv 1606.07947): supervised fine-tuning on the teacher's own greedy answers."""

from __future__ import annotations

from dataclasses import dataclass

from harness.losses import forward, token_logps
from harness.method import LossOutput, Method, MethodConfig, Term
from harness.recipes import Recipe
from harness.registry import register_method


@dataclass
class SeqKDConfig(MethodConfig):
    """No hyperparameters. The targets are the teacher's greedy answers to the training prompts (the paper uses
    beam search; greedy is its beam-1 case), generated once per run up to the budget's ``gen_max_new_tokens`` and
    shared with any other method that needs them. They are exchanged as text, so the pair need not share a
    tokenizer. The loss is the token-mean NLL over the step, as in sft."""


RECIPES = {"paper": Recipe("SFT on the teacher's greedy answers (beam 1 instead of the paper's beam search).",
                          source="arXiv 1606.07947")}


@register_method("seqkd")
class SeqKD(Method):
    description = "SFT on the teacher's greedy answers to the training prompts."
    paper = "Kim & Rush 2016, arXiv 1606.07947"
    Config = SeqKDConfig
    recipes = RECIPES
    default_recipe = "paper"
    needs = ("teacher_samples",)

    def loss(self, model, batch):
        seqs = batch.signals["teacher_samples"]
        logp, _ = token_logps(forward(model, seqs), seqs)
        return LossOutput([Term("nll", -logp.sum(), "teacher_samples_tokens")], student_tokens=seqs.n_tokens)
