"""Regenerate the bundled demo voices (styletx/audio/demo_voices/) with espeak-ng.

Two clearly different espeak-ng voices read different sentences (unpaired training folders a/
and b/) and the same held-out sentences (test_a/ and test_b/, same file names), written as
22.05 kHz mono 16-bit FLAC. Needs `espeak-ng` (Debian: apt-get install espeak-ng); the committed
files make the demo work without it.

    python scripts/make_demo_voices.py
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

OUT = Path(__file__).resolve().parents[1] / "styletx" / "audio" / "demo_voices"
VOICES = {  # espeak-ng voice, pitch (0-99), speed (words per minute)
    "a": ("en-us+m3", 30, 150),  # a low male voice
    "b": ("en-us+f4", 75, 165),  # a high female voice
}
SENTENCES = [
    "The morning train was late again, so we walked along the river.",
    "Please put the blue folder on the second shelf near the window.",
    "A small boat drifted slowly past the old stone bridge.",
    "She painted the fence white before the summer rain arrived.",
    "Our neighbours grow tomatoes, beans and sweet yellow peppers.",
    "The library closes at six on weekdays and at noon on Saturdays.",
    "He forgot his umbrella and came home soaked to the skin.",
    "Every evening the children count the stars above the hill.",
    "The recipe needs two eggs, a cup of flour and a pinch of salt.",
    "Turn left at the bakery and you will see the green door.",
    "Winter came early that year and the lake froze in November.",
    "The old clock in the hall still rings every hour.",
    "We packed sandwiches and apples for the long drive north.",
    "The teacher asked everyone to read the first chapter aloud.",
    "A gentle wind carried the smell of fresh bread down the street.",
    "The concert was moved indoors because of the storm.",
    "My brother fixed the bicycle with a wrench and some patience.",
    "Bright lanterns hung from every tree in the quiet garden.",
    "The museum opened a new room full of ancient maps.",
    "Nobody knew who had left the flowers on the doorstep.",
    "The cat slept all afternoon in a warm patch of sunlight.",
    "Fresh snow covered the mountain road by early morning.",
    "They planted a row of young oak trees along the path.",
    "The market sells honey, cheese and bread on Thursdays.",
    "Her letter arrived three weeks after she had sent it.",
    "The lighthouse guided the fishing boats safely home.",
    "We listened to the radio while the soup was cooking.",
    "The hikers rested by a waterfall before the final climb.",
    "A red kite danced high above the crowded beach.",
    "The office moved to a bright building near the station.",
    "He wrote the phone number on the back of an envelope.",
    "The orchestra tuned their instruments in the hall.",
    "Thick clouds rolled in from the sea after lunch.",
    "The baker opens his shop before the sun comes up.",
    "She found an old photograph tucked inside the book.",
    "The bus stops outside the school every twenty minutes.",
    "Please remember to water the plants while I am away.",
    "The travellers crossed the desert under a silver moon.",
    "A warm fire crackled in the corner of the cabin.",
    "The garden gate squeaks whenever somebody opens it.",
    "The village celebrates the harvest with music and dancing.",
    "He measured the table twice before cutting the wood.",
    "The river rose quickly after three days of heavy rain.",
    "Our train leaves from platform nine at half past four.",
    "The little dog barked at every bird in the park.",
    "They shared a pot of tea and talked until midnight.",
    "The map showed a narrow path through the forest.",
    "She learned to play the violin when she was seven.",
]
HELD_OUT = [
    "The quick brown fox jumps over the lazy dog near the barn.",
    "I would like a cup of coffee and a slice of apple pie, please.",
    "The weather forecast promises sunshine for the whole weekend.",
    "Could you tell me the way to the nearest post office?",
]


def speak(text: str, voice: str, pitch: int, speed: int) -> tuple[np.ndarray, int]:
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        subprocess.run(["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed),
                        "-w", tmp.name, text], check=True)
        wave, rate = sf.read(tmp.name, dtype="float32")
    return wave, rate


def main() -> None:
    half = len(SENTENCES) // 2
    plan = {"a": SENTENCES[:half], "b": SENTENCES[half:]}  # different sentences: unpaired
    for side, (voice, pitch, speed) in VOICES.items():
        for folder, texts in ((side, plan[side]), (f"test_{side}", HELD_OUT)):
            (OUT / folder).mkdir(parents=True, exist_ok=True)
            for i, text in enumerate(texts):
                wave, rate = speak(text, voice, pitch, speed)
                sf.write(OUT / folder / f"{folder}_{i:02d}.flac" if folder == side
                         else OUT / folder / f"held_{i:02d}.flac", wave, rate, subtype="PCM_16")
    (OUT / "SENTENCES.txt").write_text(
        "a/: " + " | ".join(plan["a"]) + "\n\nb/: " + " | ".join(plan["b"])
        + "\n\ntest_a/ and test_b/ (held_NN): " + " | ".join(HELD_OUT) + "\n")


if __name__ == "__main__":
    main()
