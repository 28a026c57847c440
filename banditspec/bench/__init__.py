"""`banditspec bench`: the serving stack against in-process `transformers` generation on a stored workload.

Methods, per dtype (the target and the baselines always share it):

  hf-plain         `model.generate(do_sample=False)` in this process (the reference output too)
  hf-pld           the same with `prompt_lookup_num_tokens=5`
  hf-assisted      the same with `assistant_model=` the family's (or --assistant's) draft model
  ucbspec          the local stack (target + draft service + controller) through gRPC, policy UCBSpec
  ucbspec-cf       the same, UCBSpec also fed counterfactual scores of unpulled model-free arms
  exp3spec         the same, policy EXP3Spec
  uniform          the same, a uniformly random arm each round (the no-learning baseline)
  fixed:ARM        the same, policy FIXED with allowed_arms=[ARM], for every arm ListArms returns
  oracle           computed: per prompt, the fixed arm with the highest tokens/s in hindsight

tokens/s = generated tokens / wall seconds of one client call (prefill included). Each method gets one
untimed warm-up call; then, for each prompt and repeat, every method runs in turn, so that slow drift of a
shared machine hits all methods alike. With --repeats N the median call counts.

Regret (REFERENCE.md §1) is against the prompt's oracle arm: rounds regret = rounds − the oracle arm's
rounds; time regret = seconds − tokens / the oracle's tokens/s. The curves over rounds use the bandits'
round updates: at round t, round seconds so far − tokens so far / the oracle arm's decode rate (its tokens
over its summed round seconds, prefill excluded on both sides).

Correctness: every stack output must equal hf-plain's token for token; a float32 mismatch of the stack (or a
stream inconsistent with its final response) exits with status 1; bfloat16 mismatches are only reported.
"""
