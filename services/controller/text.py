"""Incremental detokenisation with stop strings.

Text is released only when it is final: an incomplete UTF-8 character ("\ufffd" at the end) or the
start of a possible stop string is held back until later tokens settle it.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase


class TextStream:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: list[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self.stopped = False
        # ids[:settled] decode to settled_text, and later tokens never change it: each round decodes
        # only the tail, not the whole answer.
        self.settled = 0
        self.settled_text = ""

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def add(self, new_ids: list[int]) -> tuple[list[int], str]:
        """Append verified tokens; returns the ones kept (a stop string cuts the rest) and new text."""
        before = len(self.ids)
        self.ids.extend(new_ids)
        self.text = self.settled_text + self._decode(self.ids[self.settled :])
        self._settle()
        hit = self._find_stop()
        if hit is not None:
            self.stopped = True
            # Keep tokens up to the one that completes the stop string; the text ends before it.
            for end in range(before + 1, len(self.ids) + 1):
                if self._find_stop(self._decode(self.ids[:end])) is not None:
                    del self.ids[end:]
                    break
            self.text = self.text[:hit]
        kept = self.ids[before:]
        return kept, self._release(final=self.stopped)

    def _settle(self, window: int = 64, margin: int = 8) -> None:
        """Move the settled point forward once the tail is long, where the split decodes cleanly."""
        if len(self.ids) - self.settled < window:
            return
        split = len(self.ids) - margin
        head = self._decode(self.ids[self.settled : split])
        if self.settled_text + head + self._decode(self.ids[split:]) == self.text:
            self.settled, self.settled_text = split, self.settled_text + head

    def finish(self) -> str:
        return self._release(final=True)

    def _find_stop(self, text: str | None = None) -> int | None:
        text = self.text if text is None else text
        positions = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return min(positions) if positions else None

    def _release(self, final: bool) -> str:
        end = len(self.text)
        if not final:
            while end > self.emitted and self.text[end - 1] == "\ufffd":
                end -= 1
            for stop in self.stop:  # a suffix that could grow into a stop string
                for size in range(min(len(stop) - 1, end - self.emitted), 0, -1):
                    if self.text[end - size : end] == stop[:size]:
                        end -= size
                        break
        delta = self.text[self.emitted : end]
        self.emitted = max(self.emitted, end)
        return delta
