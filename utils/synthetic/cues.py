"""How each Emotic category shows in a synthetic scene: in pixels, in a captioner's words, or both.

This table is what makes the data learnable. Body categories are drawn on the person (clothing pattern, posture,
face), scene categories in the background (weather, light, objects), and the rest only reach the words. Each cue
fires with a chance below one and distractors are added elsewhere, so every modality alone is informative but
imperfect and the two together know more than either. No phrase names a category.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from utils.labels import CATEGORIES


@dataclass(frozen=True)
class Cue:
    """How one emotion category shows in a synthetic scene.

    ``prevalence`` is the base chance that a person has the category (raised around the image's mood, see
    ``MOODS``); ``vad`` shifts valence, arousal and dominance from the middle of the 1..10 scale.
    ``channel`` says where the renderer draws it ("body": the figure's clothing/posture/face, "scene": the
    background, None: not drawn). ``motif`` is what is drawn: for the body (fabric pattern, colour, second colour,
    posture or None, face tint or None), for the scene the name of the drawn element (the renderer keys on the
    category). ``p_img`` / ``p_txt`` are the chances that a person with this category gets the visual cue / a
    sentence fragment about it; ``phrases`` are activity fragments a captioner could write, ``seen`` are fragments
    describing the visual cue itself.
    """
    prevalence: float
    vad: tuple[float, float, float]
    channel: str | None = None
    motif: tuple = ()
    p_img: float = 0.0
    p_txt: float = 0.75
    phrases: tuple[str, ...] = ()
    seen: tuple[str, ...] = ()


CUES: dict[str, Cue] = {
    # --- shown mainly on the body (clothing pattern, posture, face) ---
    "Excitement": Cue(0.20, (1.5, 2.5, 1.0), "body", ("stripes_v", "orange", "yellow", "up", None), 0.85, 0.15,
                      ("jumping on a trampoline", "cheering at a concert", "riding a roller coaster"),
                      ("with both arms raised", "jumping with arms in the air", "in an orange striped shirt")),
    "Confidence": Cue(0.25, (1.0, 0.5, 2.5), "body", ("stripes_h", "navy", "gold", "hips", None), 0.7, 0.4,
                      ("giving a speech at a podium", "leading a team meeting", "posing for the camera in a suit"),
                      ("standing tall with hands on hips", "in a navy shirt with gold stripes")),
    "Fatigue": Cue(0.06, (-1.0, -2.5, -1.0), "body", ("solid", "grey", "grey", "slump", None), 0.85, 0.15,
                   ("yawning on a couch", "asleep on a train", "resting after a long run"),
                   ("slouching with drooping shoulders", "in a plain grey sweater")),
    "Fear": Cue(0.04, (-2.5, 2.0, -2.5), "body", ("zigzag", "purple", "black", "crouch", None), 0.85, 0.15,
                ("running from a large dog", "hiding behind a wall", "clinging to a steep cliff"),
                ("crouching low", "in a purple zigzag top")),
    "Anger": Cue(0.03, (-3.0, 2.5, 1.5), "body", ("checker", "red", "black", None, "red"), 0.85, 0.15,
                 ("shouting at someone across the street", "pointing a finger at a man", "slamming a door"),
                 ("with a red face", "in a red checked shirt")),
    "Pain": Cue(0.03, (-3.0, 1.0, -1.5), "body", ("diagonal", "white", "red", "front", None), 0.85, 0.15,
                ("holding a bandaged knee", "lying on the field after a tackle", "clutching the stomach"),
                ("holding an arm across the chest", "in a white shirt with red marks")),
    "Embarrassment": Cue(0.02, (-1.5, 1.0, -2.0), "body", ("dots", "pink", "white", None, "pink"), 0.85, 0.15,
                         ("covering the face with a hand", "spilling a drink on a shirt", "slipping on the ice"),
                         ("with flushed cheeks", "in a pink polka dot top")),
    "Suffering": Cue(0.04, (-3.5, 0.5, -2.0), "body", ("grain", "brown", "khaki", "slump", None), 0.85, 0.15,
                     ("lying in a hospital bed", "begging on a street corner", "carrying heavy sacks in the heat"),
                     ("hunched over", "in a torn brown shirt")),
    # --- shown mainly in the background (weather, light, objects) ---
    "Engagement": Cue(0.50, (0.5, 1.0, 1.0), "scene", ("board",), 0.6, 0.45,
                      ("playing a game of chess", "working on a laptop", "playing football", "cooking in a kitchen",
                       "talking with a colleague", "fixing a bicycle"),
                      ("at a table with a board game", "next to a chess board")),
    "Happiness": Cue(0.30, (2.5, 1.0, 1.0), "scene", ("sun",), 0.7, 0.4,
                     ("laughing with friends", "smiling at a birthday party", "celebrating at a wedding"),
                     ("on a sunny day with balloons", "under bright sunshine")),
    "Pleasure": Cue(0.20, (2.5, -0.5, 0.5), "scene", ("flowers",), 0.85, 0.15,
                    ("eating an ice cream", "relaxing in a hot bath", "sipping a coffee in the sun"),
                    ("in a garden full of flowers", "among blooming flowers")),
    "Peace": Cue(0.15, (2.0, -2.5, 0.5), "scene", ("lake",), 0.85, 0.15,
                 ("meditating by a lake", "lying in a hammock", "walking along a quiet beach"),
                 ("by a calm lake", "near still water")),
    "Sadness": Cue(0.06, (-3.0, -1.5, -1.5), "scene", ("rain",), 0.85, 0.15,
                   ("crying at a funeral", "looking down at a broken toy", "sitting alone on the stairs"),
                   ("in the rain", "on a gloomy rainy day")),
    "Disconnection": Cue(0.06, (-1.0, -1.5, -0.5), "scene", ("fog",), 0.85, 0.15,
                         ("staring at a phone alone on a bench", "sitting apart from a group"),
                         ("in a foggy empty street", "in thick fog")),
    # --- not drawn: only a captioner's words carry them ---
    "Anticipation": Cue(0.30, (0.5, 1.0, 0.0), phrases=(
        "waiting at the starting line", "looking toward the door", "watching the clock at a station",
        "standing at a gate about to board")),
    "Affection": Cue(0.12, (2.5, 0.0, 0.5), phrases=(
        "hugging a child", "holding hands with a partner", "kissing a baby on the cheek")),
    "Sympathy": Cue(0.08, (0.5, -0.5, 0.0), phrases=(
        "comforting a crying friend", "helping an old man cross the street", "patting a child on the back")),
    "Esteem": Cue(0.08, (1.5, 0.0, 0.5), phrases=(
        "receiving a medal", "shaking hands with an officer", "listening closely to a teacher")),
    "Yearning": Cue(0.07, (-0.5, -0.5, -0.5), phrases=(
        "gazing at a shop window", "looking at an old photograph", "watching a plane take off")),
    "Doubt/Confusion": Cue(0.07, (-0.5, 0.5, -1.0), phrases=(
        "scratching the head over a map", "reading an instruction manual", "squinting at a street sign")),
    "Disquietment": Cue(0.07, (-1.5, 1.5, -1.0), phrases=(
        "pacing in a hospital corridor", "biting the nails", "checking a watch again and again")),
    "Surprise": Cue(0.05, (0.5, 2.5, 0.0), phrases=(
        "opening a gift box", "staring wide-eyed at a magic trick", "jumping back from a popping balloon")),
    "Annoyance": Cue(0.05, (-2.0, 1.5, 0.5), phrases=(
        "stuck in a traffic jam", "waiting in a long queue", "covering the ears near a loud drill")),
    "Disapproval": Cue(0.04, (-1.5, 0.5, 1.5), phrases=(
        "shaking the head at a referee", "with arms crossed watching a messy room")),
    "Sensitivity": Cue(0.04, (0.0, -0.5, -1.0), phrases=(
        "touching a flower gently", "listening to a sad story")),
    "Aversion": Cue(0.02, (-2.0, 1.0, 0.0), phrases=(
        "holding the nose near a garbage bin", "pushing a plate of food away", "turning away from a spider")),
}
assert set(CUES) == set(CATEGORIES), "every Emotic category needs a cue"

MOODS = {  # a shared mood per image makes categories co-occur as in real photos
    "joyful": ("Happiness", "Pleasure", "Excitement", "Affection", "Surprise"),
    "calm": ("Peace", "Pleasure", "Fatigue", "Sensitivity", "Yearning"),
    "busy": ("Engagement", "Anticipation", "Confidence", "Esteem", "Doubt/Confusion"),
    "tense": ("Disquietment", "Fear", "Annoyance", "Anger", "Disapproval", "Aversion", "Embarrassment"),
    "sad": ("Sadness", "Suffering", "Pain", "Sympathy", "Disconnection", "Yearning"),
}
MOOD_WEIGHTS = np.array([0.3, 0.2, 0.3, 0.1, 0.1])
P_SEEN = 0.25  # chance that the captioner mentions a drawn cue

# Words and colours that carry no label: places, plain clothes and the subject of a description.
NEUTRAL_SCENES = ("in a room", "outside", "on a street", "in an office", "in a park", "at home", "")
NEUTRAL_CLOTHES = ("blue", "green", "teal", "beige", "black", "white", "khaki")
SUBJECTS = {
    ("Male", "Adult"): ("a man", "a young man", "an older man", "a guy"),
    ("Female", "Adult"): ("a woman", "a young woman", "an older woman", "a lady"),
    ("Male", "Teenager"): ("a teenage boy", "a young boy"),
    ("Female", "Teenager"): ("a teenage girl", "a young girl"),
    ("Male", "Kid"): ("a little boy", "a small child"),
    ("Female", "Kid"): ("a little girl", "a small child"),
}
