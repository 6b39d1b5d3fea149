"""lmms-eval's own ``openai`` model, pointed at the proxy, gets answers on prompted images.

Drives ``lmms_eval.models.chat.openai.OpenAICompatible.generate_until`` (the class behind
``--model openai``) with one request built as lmms-eval's tasks build them. Importing lmms-eval
is slow (tens of seconds), hence ``slow``.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip(
    "starlette", reason="the proxy needs the serve extra: pip install -e '.[serve]'"
)
pytest.importorskip("uvicorn", reason="the proxy needs the serve extra: pip install -e '.[serve]'")
lmms_openai = pytest.importorskip(
    "lmms_eval.models.chat.openai",
    reason="needs lmms-eval: pip install lmms-eval (0.7.3 is tested)",
)

from api_prompt import prompt  # noqa: E402
from api_prompt.prompter import Prompter  # noqa: E402
from api_prompt.serve import ServeConfig, create_app  # noqa: E402
from scripted_http import RawServer  # noqa: E402
from serve_support import echo_upstream, pixel_digest, random_image, running_proxy, sent_images  # noqa: E402
from test_serve import SETTINGS  # noqa: E402


@pytest.mark.slow
def test_lmms_eval_openai_model_through_the_proxy():
    from lmms_eval.api.instance import Instance

    image = random_image(3, (48, 40))
    docs = [{"image": image, "question": "What is red?"}]

    def doc_to_messages(doc):
        return [
            {
                "role": "user",
                "content": [
                    {"type": "image", "url": doc["image"]},
                    {"type": "text", "text": doc["question"]},
                ],
            }
        ]

    with RawServer(default=echo_upstream) as upstream:
        app = create_app(Prompter(**SETTINGS), ServeConfig(upstream=upstream.base_url))
        with running_proxy(app) as base_url:
            model = lmms_openai.OpenAICompatible(
                model_version="Qwen/Qwen2-VL-7B-Instruct",
                base_url=base_url,
                api_key="unused",
                max_retries=1,
                num_concurrent=1,
            )
            model.task_dict = {"demo": {"test": docs}}
            request = Instance(
                "generate_until",
                ("What is red?", doc_to_messages, {"max_new_tokens": 8}, 0, "demo", "test"),
                0,
                {"task": "demo", "doc_id": 0, "repeats": 1},
            )
            (result,) = model.generate_until([request])

    expected = prompt(image, "What is red?", **SETTINGS)
    (received,) = sent_images(upstream.requests[0])
    assert np.array_equal(
        np.asarray(received), np.asarray(expected)
    )  # lmms-eval sends lossless PNG
    assert result.text == "What is red?|" + pixel_digest(expected)
    assert upstream.requests[0]["json"]["model"] == "Qwen/Qwen2-VL-7B-Instruct"
