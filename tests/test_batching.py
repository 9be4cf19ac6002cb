"""Continuous batching (gptlab/model/batching.py): requests that arrive at different steps share the caches' rows,
join and leave the batch between steps, and each gets the tokens it gets served alone."""

import pytest
import torch

from gptlab.model import GPT, GPTConfig, generate
from gptlab.model.batching import ContinuousBatcher, Request


def lively(**kw) -> GPT:
    """Large random weights: greedy tokens that depend on every position and on what each row sees."""
    torch.manual_seed(0)
    m = GPT(GPTConfig(**{"vocab_size": 50, "block_size": 32, "n_layer": 2, "n_head": 4, "n_embd": 32,
                         "dropout": 0.0, "tie_weights": False, **kw})).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.3) if p.dim() > 1 else None
    return m


def alone(m: GPT, req: Request) -> list[int]:
    gen = torch.Generator().manual_seed(req.seed)
    out = generate(m, torch.tensor([req.prompt]), req.max_new_tokens, temperature=req.temperature,
                   top_k=req.top_k, top_p=req.top_p, generator=gen, stop_token=req.stop_token)
    return out[0, len(req.prompt):].tolist()


@pytest.mark.parametrize("levers", [{}, {"pos": "rope", "n_kv_head": 2, "norm_type": "rmsnorm"}])
def test_requests_arriving_at_different_steps_each_get_their_answer_alone(levers):
    m = lively(**levers)
    torch.manual_seed(4)
    requests = [Request(torch.randint(0, 50, (n,)).tolist(), new, temperature=t, top_k=k, seed=s)
                for n, new, t, k, s in [(5, 10, 0.0, None, 1), (9, 4, 0.0, None, 2), (2, 12, 1.0, 10, 3),
                                        (7, 6, 0.8, None, 4), (3, 8, 0.0, None, 5), (11, 3, 1.0, None, 6)]]
    expected = [alone(m, r) for r in requests]
    batcher = ContinuousBatcher(m, rows=3, vocab_size=50)
    arrivals = {0: requests[:2], 2: requests[2:4], 5: requests[4:]}  # step -> the requests that come then
    step = 0
    while step in arrivals or batcher.busy:
        for r in arrivals.get(step, []):
            batcher.add(r)
        batcher.step()
        assert sum(s is not None for s in batcher.slots) <= 3
        step += 1
    assert [r.tokens for r in requests] == expected and all(r.finished for r in requests)
    assert len({tuple(e) for e in expected}) == len(expected)  # the answers differ


def test_a_cancelled_request_frees_its_row_at_once_and_a_stop_token_ends_one():
    m = lively()
    batcher = ContinuousBatcher(m, rows=1)
    first, second = Request([1, 2, 3], 20), Request([4, 5], 5)
    batcher.add(first)
    batcher.add(second)
    batcher.step()
    assert batcher.slots == [first] and list(batcher.waiting) == [second]
    batcher.cancel(first)  # its client went away
    assert batcher.slots == [None] and first.finished
    batcher.step()
    assert batcher.slots == [second]
    while batcher.busy:
        batcher.step()
    assert second.tokens == alone(m, Request([4, 5], 5))
    stop = alone(m, Request([7, 8], 6))[2]  # the third token it would write
    ended = batcher.add(Request([7, 8], 6, stop_token=stop))
    while batcher.busy:
        batcher.step()
    assert ended.tokens[-1] == stop and len(ended.tokens) <= 3


def test_a_request_that_does_not_fit_the_context_is_refused():
    batcher = ContinuousBatcher(lively(), rows=2)
    with pytest.raises(ValueError, match="do not fit the model's context of 32"):
        batcher.add(Request(list(range(30)), 5))
    with pytest.raises(ValueError, match="at least one prompt token"):
        Request([], 5)
