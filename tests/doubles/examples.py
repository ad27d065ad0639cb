"""A small synthetic approved set for a relevance task, for the tests and the step bench.

Each document is a few passages; passages about personal-information rules are relevant, the
rest not, so a model can learn the labels from the text. `zh` is the built-in `relevance` task
itself (its exact version, so eval finds its label set); `en` is an English twin whose much
shorter token sequences keep CPU training in the tests quick. Seeded: the same arguments give
the same records.
"""

from __future__ import annotations

import hashlib
import random
from typing import Literal

from distillery.records import TrainingExample
from distillery.tasks import load_task

_TEXT = {
    "zh": {
        "instruction": "判断以下文本是否与“个人信息保护与数据安全”相关。先给出结论（相关/不相关），再写####，然后给出理由。",
        "labels": ("相关", "不相关"),
        "relevant": [
            "第{n}条 个人信息处理者在处理个人信息前，应当以显著方式告知处理目的、处理方式和保存期限。",
            "第{n}条 处理敏感个人信息应当取得个人的单独同意，并进行个人信息保护影响评估。",
            "第{n}条 数据处理者应当采取加密、去标识化等安全技术措施，防止个人信息泄露、篡改或丢失。",
        ],
        "irrelevant": [
            "员工食堂自第{n}周起调整早餐时间，增设素食窗口，请大家相互转告。",
            "本周末第{n}届登山活动因天气原因取消，已报名的同事将收到退款通知。",
            "第{n}季度销售会议将在三楼会议室举行，请各部门提前准备业绩材料。",
        ],
        "reasons": ("文本规定了个人信息的处理规则，直接涉及个人信息保护。", "文本讲的是日常行政安排，没有涉及个人信息或数据安全。"),
    },
    "en": {
        "instruction": "Is this text about personal data protection? Answer relevant or irrelevant, then ####, then why.",
        "labels": ("relevant", "irrelevant"),
        "relevant": [
            "Article {n}: controllers must tell people why their personal data is processed.",
            "Article {n}: sensitive personal data needs the person's explicit consent.",
            "Article {n}: personal data must be encrypted to prevent leaks.",
        ],
        "irrelevant": [
            "The canteen opens earlier from week {n}.",
            "The hiking trip number {n} is cancelled because of rain.",
            "The sales meeting for quarter {n} is on the third floor.",
        ],
        "reasons": ("It sets rules for personal data.", "It is an office notice with no personal data."),
    },
}


def sample_examples(
    documents: int = 8, per_document: int = 4, *, language: Literal["zh", "en"] = "zh", seed: int = 0,
    padding: int = 0,
) -> list[TrainingExample]:
    """documents x per_document approved records; `padding` repeats each passage that many extra
    times, for inputs long enough to reach a cutoff."""
    text = _TEXT[language]
    task_name, task_hash = ("relevance", load_task("relevance").hash) if language == "zh" else ("relevance-en", "en")
    rng = random.Random(seed)
    out = []
    for d in range(documents):
        doc_id = hashlib.sha256(f"sample-doc-{seed}-{d}".encode()).hexdigest()[:32]
        for c in range(per_document):
            relevant = rng.random() < 0.5
            pool = text["relevant" if relevant else "irrelevant"]
            passage = rng.choice(pool).format(n=rng.randint(1, 99))
            out.append(TrainingExample(
                annotation_id=f"ann-{d:02d}-{c:02d}", task_name=task_name, task_hash=task_hash, step="main",
                document_id=doc_id, document_path=f"docs/sample{d:02d}.txt",
                chunk_id=hashlib.sha256(f"{doc_id}-{c}".encode()).hexdigest()[:32],
                instruction=text["instruction"], input=" ".join([passage] * (1 + padding)),
                conclusion=text["labels"][0 if relevant else 1], reasoning=text["reasons"][0 if relevant else 1],
                reviewer="sample", teacher_model="sample",
            ))
    return out
