"""The shared data layer: read rows → normalise to one type per stage kind → tokenise → collate."""

from lightalign.data.loading import load_lm_examples, load_prompt_examples
from lightalign.data.preference import PreferenceReport, load_preference_pairs, load_preference_splits
from lightalign.data.types import Conversation, Message, PlainText, PreferencePair, PromptOnly

__all__ = [
    "Conversation",
    "Message",
    "PlainText",
    "PreferencePair",
    "PreferenceReport",
    "PromptOnly",
    "load_lm_examples",
    "load_preference_pairs",
    "load_preference_splits",
    "load_prompt_examples",
]
