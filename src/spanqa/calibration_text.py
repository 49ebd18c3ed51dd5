"""A few question/passage pairs of plain prose, written for spanqa, that `spanqa export` runs through a
model to measure the size of its activations (int8 smoothing scales). Which channels of a BERT-family
encoder carry outliers depends on the weights, hardly on the text, so a dozen ordinary passages on
mixed topics find them (bench/infer_cpu.py compares this with calibrating on SQuAD dev windows)."""

from __future__ import annotations

CALIBRATION_PAIRS: tuple[tuple[str, str], ...] = (
    ("When did the bridge open to traffic?",
     "Construction of the suspension bridge began in the spring of 1931, after two years of arguments in the "
     "city council about its cost. Engineers sank the towers into bedrock forty metres below the river, and "
     "the main cables were spun from more than twenty thousand steel wires. The bridge opened to traffic on "
     "12 May 1937, and for a decade it held the record for the longest central span in the world."),
    ("What does the enzyme break down?",
     "Lactase is an enzyme produced in the small intestine that breaks down lactose, the sugar found in milk, "
     "into glucose and galactose. Most mammals stop producing it after weaning, but many human populations "
     "keep making it into adulthood, a trait that spread with dairy farming. People without enough lactase "
     "may feel bloated or unwell after drinking milk, although yoghurt and hard cheese are usually tolerated."),
    ("Who won the final?",
     "The final was played in front of 68,000 spectators on a wet October evening. The visitors scored twice "
     "in the first half, but the home side came back with three goals after the break, the last a header in "
     "the ninety-first minute. Northbridge United won the final 3-2 and lifted the trophy for the first time "
     "since 1974; their captain, a 34-year-old defender, announced his retirement the next morning."),
    ("How long is the notice period?",
     "Either party may end this agreement by giving the other written notice. The notice period is thirty "
     "days for monthly plans and ninety days for annual plans, counted from the day the notice is received. "
     "Fees already paid for the current period are not refunded, except where the law of your country "
     "requires it. We may suspend the service at once if you break the acceptable use policy."),
    ("What information is shared with advertisers?",
     "We do not sell your personal information. We share aggregated statistics, such as the number of "
     "visitors from a region, with advertising partners so that they can measure campaigns; these figures "
     "cannot be used to identify you. Your e-mail address is shared only with the payment processor, and "
     "only to send receipts. You can ask us for a copy of the data we hold about you at any time."),
    ("Which gas makes up most of the atmosphere?",
     "Earth's atmosphere is about 78 percent nitrogen and 21 percent oxygen by volume, with argon, carbon "
     "dioxide and traces of other gases making up the rest. Water vapour varies from almost nothing over "
     "deserts to about four percent in the tropics. The layer closest to the ground, the troposphere, holds "
     "most of the air's mass and nearly all of its weather."),
    ("What did the committee recommend?",
     "After reviewing 412 submissions, the committee recommended that the school day start at half past "
     "eight instead of eight, that homework in the first two years be limited to thirty minutes a night, and "
     "that the budget for libraries be doubled over five years. The minister accepted the first two "
     "recommendations in March but said the third would have to wait for the next spending review."),
    ("Why did the company recall the heaters?",
     "The company recalled about 140,000 portable heaters sold between 2019 and 2021 because a faulty "
     "thermostat could let them overheat. It had received 37 reports of melted casings and two small fires, "
     "though no injuries. Owners were told to stop using the heaters, check the model number on the base and "
     "return them to any store for a full refund or a replacement."),
    ("What is the function of the mitochondria?",
     "Mitochondria are the organelles in which most of a cell's chemical energy is produced. They take in "
     "oxygen and the breakdown products of sugars and fats and make adenosine triphosphate, the molecule that "
     "powers reactions throughout the cell. Mitochondria carry their own small circle of DNA, inherited from "
     "the mother, which is one reason they are thought to descend from free-living bacteria."),
    ("How many people lived in the town in 1900?",
     "The town grew quickly once the railway arrived. In 1850 it had fewer than 2,000 inhabitants, most of "
     "them farm labourers and weavers; by 1900 the census counted 23,415 people, many working in the three "
     "textile mills by the canal. The mills closed one after another in the 1960s, and the population fell "
     "back to about 15,000 before new housing along the river drew commuters from the city."),
    ("What language was the program written in?",
     "The first version of the program was written in C by two graduate students who needed a faster way to "
     "compare genome sequences. It read its input from plain text files and printed alignments to the "
     "terminal. Later versions added a graphical interface in Java and support for compressed files, and in "
     "2015 the project moved to an open-source licence and a public code repository."),
    ("Where was the painting found?",
     "For almost a century the portrait was believed lost. It turned up in 2011 in the attic of a farmhouse "
     "near Ghent, rolled inside a carpet, when the new owners cleared the house. Restorers removed layers of "
     "yellowed varnish and found the artist's signature in the lower left corner. The painting now hangs in "
     "the city museum, next to two other works from the same decade."),
)
