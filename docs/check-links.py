#!/usr/bin/env python3
"""Checks the links of the built book and of README.md: every relative link names a file that exists, and every
#anchor an id (or name) in it. External links (with a scheme) are not fetched.

    python3 docs/check-links.py docs/book [README.md]

README's links into docs/src/*.md are checked against the built pages (docs/src/X.md -> docs/book/X.html), so
their anchors are the ids mdBook gave the headings. Exit 1 with one line per broken link.
"""

import html.parser
import os
import re
import sys
import urllib.parse


class Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids = set()
        self.links = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name") if tag == "a" else ("id",):
            if attrs.get(key):
                self.ids.add(attrs[key])
        if tag == "a" and attrs.get("href") is not None:
            self.links.append(attrs["href"])


def parse(path, cache={}):
    if path not in cache:
        page = Page()
        with open(path, encoding="utf-8") as f:
            page.feed(f.read())
        cache[path] = page
    return cache[path]


def external(href):
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", href)) or href.startswith("//")


def check(source, target, fragment, problems, shown):
    if not os.path.exists(target):
        problems.append(f"{source}: {shown}: no such file {target}")
        return
    if fragment and target.endswith(".html") and fragment not in parse(target).ids:
        problems.append(f"{source}: {shown}: no anchor #{fragment} in {target}")


def main():
    book = sys.argv[1] if len(sys.argv) > 1 else "docs/book"
    readme = sys.argv[2] if len(sys.argv) > 2 else None
    problems = []
    pages = 0
    links = 0
    for root, _, files in os.walk(book):
        for name in files:
            if not name.endswith(".html"):
                continue
            path = os.path.join(root, name)
            pages += 1
            for href in parse(path).links:
                if not href or external(href):
                    continue
                links += 1
                url = urllib.parse.urlsplit(href)
                target = path if not url.path else os.path.normpath(
                    os.path.join(root, urllib.parse.unquote(url.path)))
                if os.path.isdir(target):
                    target = os.path.join(target, "index.html")
                check(path, target, urllib.parse.unquote(url.fragment), problems, href)
    if readme:
        base = os.path.dirname(os.path.abspath(readme))
        src = os.path.abspath(os.path.join(book, "..", "src"))
        text = open(readme, encoding="utf-8").read()
        text = re.sub(r"```.*?```", "", text, flags=re.S)
        for href in re.findall(r"\]\(([^)\s]+)\)", text):
            if external(href):
                continue
            links += 1
            url = urllib.parse.urlsplit(href)
            target = os.path.normpath(os.path.join(base, urllib.parse.unquote(url.path)))
            if target.startswith(src + os.sep) and target.endswith(".md"):
                if not os.path.exists(target):
                    problems.append(f"{readme}: {href}: no such file {target}")
                    continue
                rel = os.path.relpath(target, src)[: -len(".md")] + ".html"
                target = os.path.join(book, rel)
            check(readme, target, urllib.parse.unquote(url.fragment), problems, href)
    for p in problems:
        print(p)
    print(f"links: {links} relative links in {pages} pages checked, {len(problems)} broken")
    if pages == 0:
        print(f"no HTML pages under {book}: build the book first (mdbook build docs)")
        return 1
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
