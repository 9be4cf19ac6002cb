"""A model served over HTTP: OpenAI's API, a chat page, many clients batched (gptlab serve)."""
