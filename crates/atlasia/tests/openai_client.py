"""Drives Atlasia's OpenAI-compatible proxy with the official `openai` package: a plain call,
a streamed call, and a tool call. Exits non-zero with a message on the first mismatch.

Usage: python3 openai_client.py BASE_URL TOKEN MODEL
"""
import json
import sys

import openai

base, token, model = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base + "/v1", api_key=token, max_retries=0)

# Plain.
r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello there"}])
assert r.object == "chat.completion", r
assert r.choices[0].message.content, r
assert r.usage.total_tokens > 0, r.usage
plain = r.choices[0].message.content

# Streaming: the pieces add up to the plain answer.
pieces, finish = [], None
for chunk in client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "hello there"}], stream=True,
    stream_options={"include_usage": True},
):
    for c in chunk.choices:
        if c.delta.content:
            pieces.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
assert "".join(pieces) == plain, ("".join(pieces), plain)
assert finish == "stop", finish

# Tools: the model is made to call the tool; the arguments are JSON valid for its schema.
tools = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}}]
r = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "weather in Paris?"}], tools=tools,
    tool_choice={"type": "function", "function": {"name": "get_weather"}},
)
call = r.choices[0].message.tool_calls[0]
assert call.function.name == "get_weather", call
assert isinstance(json.loads(call.function.arguments)["city"], str), call
assert r.choices[0].finish_reason == "tool_calls", r

# Errors come back as the library's typed exceptions.
try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    raise SystemExit("expected NotFoundError")
except openai.NotFoundError:
    pass
print("openai client: plain, streaming, tools and errors OK")
