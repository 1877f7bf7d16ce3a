"""books-sample: a small real dataset shipped with remi-tf, so that a first
run works without a download.

`samples/books-sample.csv.gz` (under 1 MB) holds 146,364 Amazon Books
reviews of 11,356 users in the `csv` format (`user_id,item_id,timestamp`):
the first 16,000 users of the SeqRecBenchmark Books sample, kept only where
they pass the ComiRec protocol's filters at threshold 5. Through the
protocol: 10,608 users, 13,260 items.

Source: Amazon product reviews 2014, Books (J. McAuley, C. Targett, Q. Shi,
A. van den Hengel, "Image-based Recommendations on Styles and Substitutes",
SIGIR 2015; research use), as prepared by the SeqRecBenchmark datasets (MIT
licence). How the sample was cut: `samples/README.md`.
"""

import os

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples",
                    "books-sample.csv.gz")
