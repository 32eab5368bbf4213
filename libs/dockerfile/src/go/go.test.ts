import { describe, expect, it } from 'vitest';
import { goQuote, goQuoteSlice } from './quote.js';
import { goReplaceAll, goSplit } from './regexp.js';
import { isSpace, toLower, trimSpace } from './unicode.js';
import { decodeUtf8, encodeUtf8, utf8Length } from './utf8.js';

describe('goQuote (strconv.Quote)', () => {
  it.each([
    ['', '""'],
    ['abc', '"abc"'],
    [`"Fran & Freddie's Diner\t☺"`, `"\\"Fran & Freddie's Diner\\t☺\\""`],
    ['\\', '"\\\\"'],
    ['\x07\b\f\n\r\t\v', '"\\a\\b\\f\\n\\r\\t\\v"'],
    ['\x00\x1b\x7f', '"\\x00\\x1b\\x7f"'],
    ['\u00a0\u00ad\u2028\ufeff', '"\\u00a0\\u00ad\\u2028\\ufeff"'],
    ['é☥☃한국어', '"é☥☃한국어"'],
    ['\u{1f600}', '"\u{1f600}"'],
    ['\u{e0001}\u{10ffff}', '"\\U000e0001\\U0010ffff"'],
    ['\u0301', '"\u0301"'],
  ])('%j', (input, expected) => {
    expect(goQuote(input)).toBe(expected);
  });

  it('prints invalid UTF-8 bytes as \\x', () => {
    expect(goQuote(decodeUtf8(Uint8Array.from([0x61, 0xff, 0xc3, 0x28, 0xed, 0xa0, 0x80])))).toBe(
      '"a\\xff\\xc3(\\xed\\xa0\\x80"',
    );
  });

  it('prints a lone surrogate as U+FFFD', () => {
    expect(goQuote('\ud800')).toBe('"\ufffd"');
  });

  it('quotes slices like %q', () => {
    expect(goQuoteSlice(['--a=b', 'c d'])).toBe('["--a=b" "c d"]');
    expect(goQuoteSlice([])).toBe('[]');
  });
});

describe('utf8', () => {
  it('round-trips invalid bytes', () => {
    const bytes = Uint8Array.from([
      0x41, 0xe2, 0x82, 0x41, 0xf0, 0x9f, 0x98, 0x80, 0x80, 0xc0, 0xaf,
    ]);
    const s = decodeUtf8(bytes);
    expect([...encodeUtf8(s)]).toEqual([...bytes]);
    expect(utf8Length(s)).toBe(bytes.length);
    expect(s.slice(4, 6)).toBe('\u{1f600}');
  });

  it('counts bytes', () => {
    expect(utf8Length('aé한😀')).toBe(1 + 2 + 3 + 4);
  });
});

describe('unicode', () => {
  it('uses Go spaces', () => {
    expect([0x09, 0x0b, 0x85, 0xa0, 0x2000, 0x3000].every(isSpace)).toBe(true);
    expect([0xfeff, 0x200b, 0x41].some(isSpace)).toBe(false);
    expect(trimSpace('\u0085 a \u00a0')).toBe('a');
    expect(trimSpace('\ufeffa')).toBe('\ufeffa');
  });

  it('lowercases rune by rune', () => {
    expect(toLower('RUN')).toBe('run');
    expect(toLower('ΟΔΟΣ')).toBe('οδοσ');
    expect(toLower('\u0130X')).toBe('ix');
  });
});

describe('regexp', () => {
  it('splits with a limit', () => {
    const re = /[\t\v\f\r ]+/u;
    expect(goSplit(re, 'a  b c', 2)).toEqual(['a', 'b c']);
    expect(goSplit(re, 'a  b c', -1)).toEqual(['a', 'b', 'c']);
    expect(goSplit(re, 'abc', 2)).toEqual(['abc']);
    expect(goSplit(re, '', 2)).toEqual(['']);
  });

  it('replaces like ReplaceAllString', () => {
    // No replacement for an empty match right after a match (JavaScript would give -a--c-).
    expect(goReplaceAll(/b*/u, 'abc', '-')).toBe('-a-c-');
    expect(goReplaceAll(/o/u, 'foo', '[$0|$1|$$|${0}|$x]')).toBe('f[o||$|o|][o||$|o|]');
    expect(goReplaceAll(/x/u, 'x', '$')).toBe('$');
  });
});
