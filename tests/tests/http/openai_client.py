"""Drives llmd's HTTP API with the official `openai` client, unmodified.

Usage: openai_client.py BASE_URL API_KEY MODEL. Prints one JSON line with what it saw; exits
non-zero (with the exception) on any failure.
"""
import json
import sys

import openai

base, key, model = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base, api_key=key, timeout=60, max_retries=0)
seen = {}
seen["models"] = [m.id for m in client.models.list()]
c = client.completions.create(model=model, prompt="Hello", max_tokens=6, temperature=0)
seen["completion"] = {"text": c.choices[0].text, "finish": c.choices[0].finish_reason,
                      "completion_tokens": c.usage.completion_tokens}
# The sampler's penalties, as Open WebUI sends them when a user sets them.
p = client.completions.create(model=model, prompt="Hello", max_tokens=6, temperature=0.7,
                              seed=3, frequency_penalty=0.5, presence_penalty=0.25)
seen["penalised"] = {"finish": p.choices[0].finish_reason,
                     "completion_tokens": p.usage.completion_tokens}
chunks = []
usage = None
stream = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=5, temperature=0,
    stream=True, stream_options={"include_usage": True})
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage.completion_tokens
    for choice in chunk.choices:
        chunks.append({"content": choice.delta.content, "finish": choice.finish_reason})
seen["chat_stream"] = {"chunks": chunks, "usage": usage}
try:
    client.completions.create(model="nope", prompt="x", max_tokens=1)
    seen["unknown_model"] = None
except openai.NotFoundError as e:
    seen["unknown_model"] = e.status_code
bad = openai.OpenAI(base_url=base, api_key="wrong", timeout=30, max_retries=0)
try:
    bad.models.list()
    seen["wrong_key"] = None
except openai.AuthenticationError as e:
    seen["wrong_key"] = e.status_code
print(json.dumps(seen))
