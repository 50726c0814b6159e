"""The openings of ``bench prose``: invented ones, and chapter openings of Pride and
Prejudice read at run time. Each carries a story bible, a pinned and a recalled memory
(whose lines must never come back as prose) and a writer's steering note naming a
person and an action. Alternate openings of each kind go to the tuning split and to the
report split, so each split holds both kinds."""
from __future__ import annotations

from pathlib import Path

from ._book import DATA

INVENTED = [
    {"name": "keeper", "title": "The Keeper's Daughter",
     "premise": "On a storm-bound island, Elena guards her dead father's lighthouse and "
                "the letter he left unopened.",
     "style": "Spare, close third person, salt and weather.",
     "heading": "Chapter 1: The Letter",
     "text": "The storm came in over the reef at dusk, as Abel Crane had always said it "
             "would. Elena lit the great lamp by hand, because the clockwork had seized "
             "again, and stood at the glass while the beam swung out over the black "
             "water.\n\nThe letter lay on the chart table where she had left it three days "
             "before. Her father's hand was on the envelope, small and careful, and the wax "
             "was still whole. She had not opened it. She told herself it was because of "
             "the weather, because of the lamp, because there was always one more thing "
             "to do. Below her the sea threw itself against the rocks and fell back, and "
             "somewhere out there a boat was running for the harbour with no light at all.",
     "pin": "Elena's eyes are grey, the cold grey of wet slate.",
     "recalled": "Tomas, Elena's brother, left the island for the capital after their "
                 "father's funeral.",
     "next": "Next: Tomas rows out to the lighthouse through the storm.",
     "person": ["Tomas"], "action": ["row", "boat", "oar"]},
    {"name": "forge", "title": "Salt and Iron",
     "premise": "Mara, a blacksmith's apprentice in a dying mining town, is asked to mend "
                "a sword that should not exist.",
     "style": "Plain, physical, past tense.",
     "heading": "Chapter 1",
     "text": "The forge was the only warm place in Greyhollow that winter, and so it was "
             "never empty. Miners came to stand by the fire before their shift, and old "
             "women came to stand by it after the market, and Mara worked among them with "
             "her sleeves rolled and her hair tied back in a rag.\n\nThe stranger came in "
             "at noon. He did not go to the fire. He laid a bundle of oiled cloth on the "
             "anvil and unwrapped it without a word, and the talk in the room stopped. "
             "Inside was a blade broken a hand's width from the hilt, and the steel of it "
             "was blue, the blue of deep ice, with a pattern in it like running water. "
             "Mara had never seen anything like it. She did not think anyone in Greyhollow "
             "had.",
     "pin": "Mara's master, old Brannock, lost his right hand in the mine collapse.",
     "recalled": "Greyhollow's last silver seam closed the spring before Mara arrived.",
     "next": "Next: Brannock comes to the forge to warn Mara about the stranger.",
     "person": ["Brannock"], "action": ["warn", "danger", "careful"]},
    {"name": "orchard", "title": "The Glass Orchard",
     "premise": "In 1887, the botanist Harriet Vane keeps her sister alive with the "
                "medicines she grows in a failing glasshouse.",
     "style": "Victorian, measured, warm, with dry humour.",
     "heading": "Chapter 1",
     "text": "The glasshouse had been built by a man who loved oranges and hated "
             "arithmetic, and it showed. Half its panes were cracked and the other half "
             "leaked, and every morning Harriet walked its length with a pot of putty and "
             "a great deal of patience.\n\nLucy was worse today. Harriet had heard it in "
             "her breathing before dawn, a thin catch at the bottom of every breath, and "
             "she had sat by the bed until the light came and then come out here, because "
             "there was nothing to do in the sickroom but wait, and out here at least "
             "there were things that grew. She cut three leaves from the foxglove by the "
             "door and laid them in her basket. The doctor would be here by noon.",
     "pin": "Lucy is nineteen and has been ill since the winter of 1885.",
     "recalled": "Dr. Pell told Harriet in March that the foxglove tincture could stop "
                 "Lucy's heart if the dose was wrong.",
     "next": "Next: Dr. Pell arrives with bad news about Lucy.",
     "person": ["Pell"], "action": ["arriv", "news", "came", "come"]},
    {"name": "station", "title": "Winter Station",
     "premise": "At an Antarctic research station, the radio goes silent and the crew "
                "of four begin to suspect one another.",
     "style": "Tense, clipped, present tense.",
     "heading": "Chapter 1",
     "text": "The radio has been silent for six days. Jonah checks it every hour anyway, "
             "on the hour, because that is the rule and because the rules are what is "
             "left. He turns the dial through the bands and listens to the hiss, and then "
             "he writes the time and the word nothing in the log.\n\nOutside the wind has "
             "dropped for the first time in a week. The light is flat and grey and goes "
             "on forever. Ingrid is in the galley, making coffee she says is terrible, "
             "and Sam and Dr. Okafor are arguing about the generator again in low voices "
             "that carry through the thin walls. Jonah puts the headphones down. He "
             "thinks he heard something, under the hiss, a pattern. He is not sure.",
     "pin": "The station's supply plane is due in nineteen days.",
     "recalled": "Sam was the last person to use the radio before it went silent.",
     "next": "Next: Ingrid finds footprints in the snow outside the hut.",
     "person": ["Ingrid"], "action": ["footprint", "track", "print"]},
    {"name": "ferry", "title": "The Ferryman's Ledger",
     "premise": "Amos has kept the river ferry for forty years and written every fare "
                "in his ledger; one night a passenger cannot pay.",
     "style": "Quiet, lyrical, a little strange.",
     "heading": "Chapter 1",
     "text": "Amos kept the ledger in a tin box under the bench, out of the wet. Every "
             "crossing had its line: the date, the fare, the name if they gave one, and a "
             "word or two for himself about the weather or the river. Forty years of "
             "lines. He had filled eleven books.\n\nThe woman came down to the landing "
             "after dark, when he had already tied up the boat and banked the stove in "
             "the hut. She wore a grey coat too thin for the season, and she carried "
             "nothing at all. She asked to be taken across. He told her the fare, and she "
             "looked at him for a long moment, and then she said she had no money, none, "
             "but that she would pay him all the same.",
     "pin": "The river is called the Lethe by the old people of the valley.",
     "recalled": "Amos's wife, Ruth, drowned at the ford the spring they were married.",
     "next": "Next: Selka pays Amos with a silver ring.",
     "person": ["Selka"], "action": ["ring", "silver"]},
    {"name": "lanterns", "title": "Lantern Street",
     "premise": "Pip sells paper lanterns in a river city; the night the warehouse burns, "
                "he is the only one who saw who was there.",
     "style": "Quick, street-level, funny and sad.",
     "heading": "Chapter 1",
     "text": "Pip sold lanterns on the bridge, and on a good night he sold forty. He "
             "made them himself in the loft over the chandler's, paper and wire and a "
             "stub of candle, and he painted them with fish because fish sold best. "
             "Nobody knew why. He had stopped asking.\n\nIt was not a good night. It was "
             "raining, the kind of fine rain that gets under a hat brim, and the bridge "
             "was empty except for the watchman and a dog. Pip was packing up when he saw "
             "the light in the warehouse on the far bank, low down, where no light should "
             "be. Then he saw the man come out of the side door, and stop, and look "
             "straight across the water at him.",
     "pin": "Pip is twelve and has lived alone since his mother died.",
     "recalled": "The warehouse on the far bank belongs to the merchant Voss.",
     "next": "Next: Constable Reed questions Pip about the fire.",
     "person": ["Reed"], "action": ["question", "ask", "asked"]},
]

# (chapter number, writer's note, person, action stems)
PRIDE = [
    (1, "Next: Lady Lucas calls at Longbourn with news of Mr. Bingley.", ["Lucas"],
     ["call", "visit", "news"]),
    (2, "Next: Lydia boasts that she will dance with Mr. Bingley at the ball.", ["Lydia"],
     ["danc", "ball"]),
    (3, "Next: Charlotte Lucas teases Elizabeth about Mr. Darcy.", ["Charlotte"],
     ["teas", "laugh", "joke"]),
    (7, "Next: Kitty and Lydia walk to Meryton to see the officers.", ["Kitty", "Lydia"],
     ["walk"]),
    (13, "Next: Mr. Collins arrives and praises the dinner.", ["Collins"],
     ["arriv", "dinner", "prais"]),
    (19, "Next: Charlotte Lucas calls to comfort Elizabeth.", ["Charlotte"],
     ["call", "comfort", "visit"]),
]
PRIDE_BIBLE = {
    "title": "Pride and Prejudice",
    "premise": "The Bennet sisters of Longbourn, their mother's schemes to marry them "
               "well, and Elizabeth's quarrel with the proud Mr. Darcy.",
    "style": "Witty, formal Regency prose, ironic narrator.",
    "pin": "Elizabeth Bennet is the second of the five Bennet daughters.",
    "recalled": "Mr. Bingley has taken Netherfield Park, three miles from Longbourn.",
}
EXCERPT_CHARS = 900


def _excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """The chapter's first paragraphs up to about ``limit`` characters, ending on a
    sentence."""
    out = ""
    for para in text.split("\n\n"):
        if out and len(out) + len(para) > limit:
            break
        out = f"{out}\n\n{para}" if out else para
    if len(out) > limit * 1.6:  # one long paragraph: cut at a sentence
        cut = out.rfind(". ", 0, int(limit * 1.3))
        out = out[:cut + 1] if cut > 0 else out
    return out


def pride_openings(path: Path | str = DATA) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise SystemExit(f"error: bench prose reads Pride and Prejudice from {path}, "
                         "which is missing (put the Gutenberg text there).")
    from ._book import chapters

    chs = chapters(path)
    out = []
    for n, note, person, action in PRIDE:
        out.append({"name": f"pride{n}", "title": PRIDE_BIBLE["title"],
                    "premise": PRIDE_BIBLE["premise"], "style": PRIDE_BIBLE["style"],
                    "heading": f"Chapter {n}", "text": _excerpt(chs[n - 1]),
                    "pin": PRIDE_BIBLE["pin"], "recalled": PRIDE_BIBLE["recalled"],
                    "next": note, "person": person, "action": action})
    return out


def openings(path: Path | str = DATA) -> dict[str, list[dict]]:
    """{'tuning': [...], 'report': [...]}: half the invented and half the Pride and
    Prejudice openings each."""
    pride = pride_openings(path)
    return {"tuning": INVENTED[0::2] + pride[0::2], "report": INVENTED[1::2] + pride[1::2]}
