"""assistant.text.normalize_text: the one normaliser every comparison and imported transcript goes through."""

import pytest

from assistant.text import normalize_text, number_words, text_words


@pytest.mark.parametrize("raw, spoken", [
    # Whisper-style ASR output -> the grammar's spoken words
    ("Set an alarm for 7:30 a.m.!", "set an alarm for seven thirty a m"),
    ("Wake me at 7:05pm", "wake me at seven oh five p m"),
    ("Turn the volume to 25%.", "turn the volume to twenty five percent"),
    ("On March 3rd", "on march third"),
    ("What's the \"weather\" in New-York?", "whats the weather in new york"),
    ("Set a timer for 1,500 seconds", "set a timer for one thousand five hundred seconds"),
    ("Make sure I'm awake by 6.15.", "make sure im awake by six fifteen"),      # Whisper's clock times
    ("Set the volume to 2.5", "set the volume to two point five"),
    ("Go forward 10 meters.", "go forward ten meters"),
    ("And Mr. John Dashwood", "and mister john dashwood"),
    ("Wake me up at eight o'clock.", "wake me up at eight o clock"),          # the grammar's "o clock"
    # "am" is the time only after a number; the verb stays one word
    ("wake me up at eight am", "wake me up at eight a m"),
    ("I am hungry", "i am hungry"),
    ("am I free tomorrow", "am i free tomorrow"),
    # imported corpora (FSC / SLURP): punctuation, quotes, underscores, curly apostrophes, accents
    ("Turn on the lights in the kitchen", "turn on the lights in the kitchen"),
    ("Lights  on,please!", "lights on please"),
    ("'quoted' words \u2019n things", "quoted words n things"),
    ("play t-shirt_song", "play t shirt song"),
    ("Play Beyoncé at the café", "play beyonce at the cafe"),
    ("  ", ""),
    ("", ""),
    (None, ""),
])
def test_normalize_text_gives_the_grammars_word_form(raw, spoken):
    assert normalize_text(raw) == spoken


@pytest.mark.parametrize("raw", ["Set an alarm for 7:30 a.m.!", "wake me up at eight am", "Mr. Smith's 3rd café"])
def test_normalize_text_is_idempotent(raw):
    once = normalize_text(raw)
    assert normalize_text(once) == once


def test_number_words_and_text_words():
    assert number_words(0) == "zero"
    assert number_words(45) == "forty five"
    assert number_words(2024) == "two thousand twenty four"
    assert text_words("Wake me at 6:00") == ["wake", "me", "at", "six"]
