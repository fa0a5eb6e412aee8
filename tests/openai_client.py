"""Drives the pio HTTP server with the official `openai` Python client, unmodified.

Run by tests/http.rs against a server serving the example plugin (which mirrors its prompt)
with OPENAI_BASE_URL and OPENAI_API_KEY set. Prints "all ok" when every check passes.
"""

import openai

client = openai.OpenAI()

models = [m.id for m in client.models.list()]
assert "example" in models, models

reply = client.chat.completions.create(
    model="example", messages=[{"role": "user", "content": "hello"}], max_tokens=16
)
assert reply.choices[0].message.content == "olleh", reply
assert reply.usage.completion_tokens == 5, reply.usage
print("chat ok")

stream = client.chat.completions.create(
    model="example",
    messages=[{"role": "user", "content": "streaming"}],
    stream=True,
    stream_options={"include_usage": True},
)
pieces, usage = [], None
for chunk in stream:
    if chunk.choices:
        pieces.append(chunk.choices[0].delta.content or "")
    if chunk.usage:
        usage = chunk.usage
assert "".join(pieces) == "gnimaerts", pieces
assert usage is not None and usage.completion_tokens == 9, usage
print("stream ok")

completion = client.completions.create(model="example", prompt="abc", max_tokens=2)
assert completion.choices[0].text == "cb", completion
assert completion.choices[0].finish_reason == "length", completion
print("completion ok")

choices = client.chat.completions.create(
    model="example",
    messages=[{"role": "user", "content": "abc"}],
    n=2,
    logprobs=True,
    top_logprobs=1,
)
assert [c.message.content for c in choices.choices] == ["cba", "cba"], choices
content = choices.choices[1].logprobs.content
assert [t.token for t in content] == ["c", "b", "a"], content
assert all(t.logprob == 0.0 and t.top_logprobs[0].token == t.token for t in content), content
print("logprobs and n ok")

echoed = client.completions.create(
    model="example", prompt="ab", max_tokens=1, echo=True, logprobs=1
)
logprobs = echoed.choices[0].logprobs
assert echoed.choices[0].text == "abb", echoed
assert logprobs.tokens == ["a", "b", "b"] and logprobs.token_logprobs[0] is None, logprobs
assert logprobs.top_logprobs[2] == {"b": 0.0}, logprobs
print("echo ok")

embeddings = client.embeddings.create(model="example", input=["one", "two"])
assert len(embeddings.data) == 2 and len(embeddings.data[0].embedding) == 64, embeddings
norm = sum(x * x for x in embeddings.data[0].embedding)
assert abs(norm - 1.0) < 1e-4, norm
print("embeddings ok")

try:
    client.chat.completions.create(
        model="no-such-model", messages=[{"role": "user", "content": "hi"}]
    )
    raise AssertionError("an unknown model must fail")
except openai.NotFoundError as error:
    assert error.status_code == 404 and "no-such-model" in str(error), error
print("unknown model ok")

try:
    openai.OpenAI(api_key="wrong").models.list()
    raise AssertionError("a wrong key must fail")
except openai.AuthenticationError as error:
    assert error.status_code == 401, error
print("wrong key ok")

print("all ok")
