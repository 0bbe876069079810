"""Word lists the stories draw their people, goods and settings from.

The order of every list is part of the corpus: draws index into it, so reordering or adding
an entry changes the generated questions.
"""

# (name, subject pronoun, possessive pronoun)
PEOPLE = (
    ("Maria", "she", "her"),
    ("Ahmed", "he", "his"),
    ("Chen", "he", "his"),
    ("Priya", "she", "her"),
    ("Lucas", "he", "his"),
    ("Amara", "she", "her"),
    ("Jonas", "he", "his"),
    ("Sofia", "she", "her"),
    ("Kenji", "he", "his"),
    ("Fatima", "she", "her"),
    ("Diego", "he", "his"),
    ("Olga", "she", "her"),
    ("Tom", "he", "his"),
    ("Aisha", "she", "her"),
    ("Mateo", "he", "his"),
    ("Hana", "she", "her"),
    ("Liam", "he", "his"),
    ("Zara", "she", "her"),
    ("Noah", "he", "his"),
    ("Elena", "she", "her"),
    ("Ravi", "he", "his"),
    ("Mia", "she", "her"),
    ("Omar", "he", "his"),
    ("Grace", "she", "her"),
    ("Ivan", "he", "his"),
    ("Nadia", "she", "her"),
    ("Leo", "he", "his"),
    ("Yuki", "she", "her"),
    ("Samuel", "he", "his"),
    ("Ines", "she", "her"),
    ("Kofi", "he", "his"),
    ("Rosa", "she", "her"),
    ("Ben", "he", "his"),
    ("Layla", "she", "her"),
    ("Arjun", "he", "his"),
    ("Clara", "she", "her"),
    ("Tariq", "he", "his"),
    ("Emma", "she", "her"),
    ("Pablo", "he", "his"),
    ("Sara", "she", "her"),
)
SURNAMES = (
    "Lee",
    "Patel",
    "Garcia",
    "Novak",
    "Okafor",
    "Kim",
    "Silva",
    "Brown",
    "Haddad",
    "Ito",
    "Mensah",
    "Larsen",
    "Costa",
    "Nguyen",
    "Weber",
    "Rossi",
)
GOODS = (
    ("notebook", "notebooks"),
    ("pen", "pens"),
    ("apple", "apples"),
    ("toy car", "toy cars"),
    ("comic book", "comic books"),
    ("T-shirt", "T-shirts"),
    ("mango", "mangoes"),
    ("sandwich", "sandwiches"),
    ("candle", "candles"),
    ("ball", "balls"),
    ("puzzle", "puzzles"),
    ("plant pot", "plant pots"),
    ("bottle of juice", "bottles of juice"),
    ("scarf", "scarves"),
    ("box of crayons", "boxes of crayons"),
    ("pair of socks", "pairs of socks"),
    ("mug", "mugs"),
    ("bar of soap", "bars of soap"),
    ("kite", "kites"),
    ("lamp", "lamps"),
)
SHOPS = ("the market", "a bookshop", "the mall", "a corner shop", "the school fair", "a toy store")
SNACKS = (
    "cookies",
    "stickers",
    "marbles",
    "grapes",
    "crackers",
    "candies",
    "cards",
    "strawberries",
    "pretzels",
    "buttons",
)
CONTAINERS = (
    ("box", "boxes"),
    ("bag", "bags"),
    ("pack", "packs"),
    ("jar", "jars"),
    ("tin", "tins"),
)
BIG_BUYS = (
    "a bike",
    "a video game",
    "a tennis racket",
    "a pair of shoes",
    "a guitar",
    "a telescope",
    "a tablet case",
    "a skateboard",
)
GAMES = (
    ("board game", "board games"),
    ("book", "books"),
    ("puzzle", "puzzles"),
    ("ticket", "tickets"),
)
VEHICLES = ("car", "bus", "train", "truck", "motorbike", "van")
BAKES = ("muffins", "cookies", "rolls", "cupcakes", "scones", "biscuits")
OTHER_BAKES = ("pancakes", "waffles", "brownies", "tarts", "cakes", "pies")
CROPS = (
    ("tomato", "tomatoes"),
    ("pepper", "peppers"),
    ("cucumber", "cucumbers"),
    ("pumpkin", "pumpkins"),
    ("strawberry", "strawberries"),
    ("lemon", "lemons"),
)
CLASS_ITEMS = ("stickers", "pencils", "erasers", "bookmarks", "crayons")
# How classroom stories address a teacher; rationales keep these capitalised, like names.
TITLES = ("Mr.", "Ms.", "Dr.")
