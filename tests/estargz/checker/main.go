// estargz-check: verifies an eStargz blob against the reference estargz library
// (github.com/containerd/stargz-snapshotter/estargz, Debian 0.12) and against the
// source layer it was converted from, and independently checks the raw byte layout.
//
//	estargz-check --blob BLOB --toc-digest sha256:... --source SOURCE.tar [--source-gz]
//	              [--prefetch-landmark [--prioritized LIST]] [--json]
//
// Exit status 0 when every check passes, 1 on the first mismatch (the message names
// the check and the entry), 2 on usage errors. On success it prints the sha256 of the
// whole decompressed blob (the new diffID); with --json a summary object
// {"ok":true,"diff_id":...,"entries":N,"chunks":N,...} (on failure {"ok":false,"error":...}).
//
// What is checked (see /work/shared/research/formats.md §1):
//
//	library:  estargz.Open parses footer and TOC; VerifyTOC(--toc-digest); every
//	          reg/chunk is read through r.OpenFile and written to the verifier of its
//	          TOC entry, so each chunkDigest is checked; whole-file "digest" too.
//	source:   same set of names (cleaned like the library does, duplicates: last wins;
//	          landmarks and stargz.index.json in the source are ignored), and per entry
//	          type, mode (all 12 permission bits), uid, gid, user/group name, mtime
//	          (seconds), link target, device numbers, SCHILY xattrs, size and content,
//	          both for the TOC view and for the tar stream a non-lazy puller unpacks.
//	raw:      51-byte footer template, TOC member (single gzip member starting with the
//	          stargz.index.json header, JSON digest over the whole tar payload, end of
//	          archive inside it, footer right after it), TOC JSON shape (version 1, no
//	          innerOffset, no unknown keys, offsets only on data entries, strictly
//	          increasing, chunk chains contiguous), every offset is a gzip member start
//	          whose first decompressed byte is that chunk's first payload byte, landmark
//	          placement, the whole blob gunzips member by member to a tar that Go's
//	          archive/tar reads to the end, and TOC entries equal tar entries in order.
package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
)

const (
	tocName            = "stargz.index.json"
	noPrefetchLandmark = ".no.prefetch.landmark"
	prefetchLandmark   = ".prefetch.landmark"
	footerSize         = 51
	xattrPrefix        = "SCHILY.xattr."
)

// checkError is a mismatch found by a check (exit 1).
type checkError struct{ msg string }

func (e *checkError) Error() string { return e.msg }

func fail(format string, args ...interface{}) {
	panic(&checkError{fmt.Sprintf(format, args...)})
}

func must(err error, format string, args ...interface{}) {
	if err != nil {
		fail("%s: %v", fmt.Sprintf(format, args...), err)
	}
}

func cleanName(name string) string {
	return strings.TrimPrefix(path.Clean("/"+name), "/")
}

func display(name string) string {
	if name == "" {
		return "<root>"
	}
	return fmt.Sprintf("%q", name)
}

// ---------------------------------------------------------------------------
// Raw TOC JSON (parsed independently of the library).

type rawEntry struct {
	Name        string            `json:"name"`
	Type        string            `json:"type"`
	Size        int64             `json:"size"`
	ModTime     string            `json:"modtime"`
	LinkName    string            `json:"linkName"`
	Mode        int64             `json:"mode"`
	UID         int               `json:"uid"`
	GID         int               `json:"gid"`
	Uname       string            `json:"userName"`
	Gname       string            `json:"groupName"`
	Offset      int64             `json:"offset"`
	DevMajor    int               `json:"devMajor"`
	DevMinor    int               `json:"devMinor"`
	Xattrs      map[string][]byte `json:"xattrs"`
	Digest      string            `json:"digest"`
	ChunkOffset int64             `json:"chunkOffset"`
	ChunkSize   int64             `json:"chunkSize"`
	ChunkDigest string            `json:"chunkDigest"`

	keys  map[string]bool
	clean string // cleaned name
	// back-filled names (writer emits a name only when it changes for an id)
	fillUname, fillGname string
	hasOffset            bool
}

var knownKeys = map[string]bool{
	"name": true, "type": true, "size": true, "modtime": true, "linkName": true,
	"mode": true, "uid": true, "gid": true, "userName": true, "groupName": true,
	"offset": true, "devMajor": true, "devMinor": true, "xattrs": true,
	"digest": true, "chunkOffset": true, "chunkSize": true, "chunkDigest": true,
}

// chunkRef is one data member (a whole small file or one chunk of a large file).
type chunkRef struct {
	entry       *rawEntry // the reg or chunk entry
	name        string    // cleaned file name
	offset      int64     // compressed offset of the gzip member
	chunkOffset int64
	chunkSize   int64 // resolved (never 0)
}

type rawTOC struct {
	entries  []*rawEntry // all entries in order
	files    []*rawEntry // non-chunk entries in order
	byName   map[string]*rawEntry
	chunks   map[string][]chunkRef // per reg file with size > 0
	allChunk []chunkRef
}

func parseRawTOC(js []byte, tocOffset int64) *rawTOC {
	var top map[string]json.RawMessage
	must(json.Unmarshal(js, &top), "TOC JSON")
	for k := range top {
		if k != "version" && k != "entries" {
			fail("TOC JSON: unknown top-level key %q", k)
		}
	}
	var version int
	must(json.Unmarshal(top["version"], &version), "TOC JSON version")
	if version != 1 {
		fail("TOC JSON: version %d, want 1", version)
	}
	var rawEntries []json.RawMessage
	must(json.Unmarshal(top["entries"], &rawEntries), "TOC JSON entries")
	t := &rawTOC{byName: map[string]*rawEntry{}, chunks: map[string][]chunkRef{}}
	unames := map[int]string{}
	gnames := map[int]string{}
	for i, re := range rawEntries {
		var keys map[string]json.RawMessage
		must(json.Unmarshal(re, &keys), "TOC entry %d", i)
		e := &rawEntry{keys: map[string]bool{}}
		for k := range keys {
			if k == "innerOffset" {
				fail("TOC entry %d (%s) has innerOffset (not understood by stargz < 0.13)", i, string(keys["name"]))
			}
			if !knownKeys[k] {
				fail("TOC entry %d (%s) has unknown key %q", i, string(keys["name"]), k)
			}
			e.keys[k] = true
		}
		must(json.Unmarshal(re, e), "TOC entry %d", i)
		e.clean = cleanName(e.Name)
		e.hasOffset = e.keys["offset"]
		t.entries = append(t.entries, e)
		if e.Type == "chunk" {
			continue
		}
		if e.Uname != "" {
			unames[e.UID] = e.Uname
		}
		e.fillUname = unames[e.UID]
		if e.Gname != "" {
			gnames[e.GID] = e.Gname
		}
		e.fillGname = gnames[e.GID]
		if _, dup := t.byName[e.clean]; dup {
			fail("TOC has two entries named %s", display(e.clean))
		}
		t.byName[e.clean] = e
		t.files = append(t.files, e)
	}

	// Structure of data entries: offsets, chunk chains.
	var lastOffset int64 = -1
	for i := 0; i < len(t.entries); i++ {
		e := t.entries[i]
		switch e.Type {
		case "dir", "symlink", "hardlink", "char", "block", "fifo":
			if e.hasOffset || e.keys["chunkOffset"] || e.keys["chunkSize"] || e.keys["chunkDigest"] || e.keys["digest"] {
				fail("TOC entry %s of type %s carries offset/chunk/digest fields", display(e.clean), e.Type)
			}
			if e.keys["size"] && e.Size != 0 {
				fail("TOC entry %s of type %s has size %d", display(e.clean), e.Type, e.Size)
			}
			if (e.Type == "symlink" || e.Type == "hardlink") && e.LinkName == "" {
				fail("TOC entry %s of type %s has no linkName", display(e.clean), e.Type)
			}
		case "chunk":
			fail("TOC entry %d: chunk entry %s does not follow its reg entry", i, display(e.clean))
		case "reg":
			if e.Size < 0 {
				fail("TOC entry %s: negative size", display(e.clean))
			}
			if e.Size == 0 {
				if e.hasOffset || e.keys["chunkOffset"] || e.keys["chunkSize"] || e.keys["chunkDigest"] {
					fail("TOC entry %s: empty file carries offset/chunk fields", display(e.clean))
				}
				if e.keys["digest"] && e.Digest != digest.FromBytes(nil).String() {
					fail("TOC entry %s: empty file has digest %s", display(e.clean), e.Digest)
				}
				continue
			}
			// chain: this reg + following chunk entries
			chain := []*rawEntry{e}
			for i+1 < len(t.entries) && t.entries[i+1].Type == "chunk" {
				i++
				chain = append(chain, t.entries[i])
			}
			var pos int64
			for ci, c := range chain {
				if ci > 0 && c.clean != e.clean {
					fail("TOC chunk entry named %s follows reg %s", display(c.clean), display(e.clean))
				}
				if !c.hasOffset || c.Offset <= 0 {
					fail("TOC entry %s chunk at %d has no offset", display(e.clean), c.ChunkOffset)
				}
				if c.Offset <= lastOffset {
					fail("TOC offsets not strictly increasing at %s (offset %d after %d)", display(e.clean), c.Offset, lastOffset)
				}
				if c.Offset >= tocOffset {
					fail("TOC entry %s: offset %d is not before the TOC offset %d", display(e.clean), c.Offset, tocOffset)
				}
				lastOffset = c.Offset
				if c.ChunkOffset != pos {
					fail("TOC entry %s: chunkOffset %d, want %d (chunks must be contiguous)", display(e.clean), c.ChunkOffset, pos)
				}
				if c.ChunkDigest == "" {
					fail("TOC entry %s: chunk at %d has no chunkDigest", display(e.clean), c.ChunkOffset)
				}
				size := c.ChunkSize
				if c.keys["chunkSize"] && size <= 0 {
					fail("TOC entry %s: chunk at %d has chunkSize %d", display(e.clean), c.ChunkOffset, size)
				}
				if size == 0 {
					size = e.Size - pos
					if ci != len(chain)-1 {
						fail("TOC entry %s: chunk at %d without chunkSize is not the last chunk", display(e.clean), c.ChunkOffset)
					}
				}
				if pos+size > e.Size {
					fail("TOC entry %s: chunk at %d size %d runs past file size %d", display(e.clean), c.ChunkOffset, size, e.Size)
				}
				ref := chunkRef{entry: c, name: e.clean, offset: c.Offset, chunkOffset: pos, chunkSize: size}
				t.chunks[e.clean] = append(t.chunks[e.clean], ref)
				t.allChunk = append(t.allChunk, ref)
				pos += size
			}
			if pos != e.Size {
				fail("TOC entry %s: chunks cover %d of %d bytes", display(e.clean), pos, e.Size)
			}
			if len(chain) == 1 && e.keys["chunkSize"] && e.ChunkSize != e.Size {
				fail("TOC entry %s: single chunk with chunkSize %d != size %d", display(e.clean), e.ChunkSize, e.Size)
			}
		default:
			fail("TOC entry %s: unknown type %q", display(e.clean), e.Type)
		}
	}
	return t
}

// ---------------------------------------------------------------------------
// Gzip member walker: decompresses the blob member by member and records where
// each member starts (compressed offset) and what decompressed offset it maps to.

type countingReader struct {
	br *bufio.Reader
	n  int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.br.Read(p)
	c.n += int64(n)
	return n, err
}

func (c *countingReader) ReadByte() (byte, error) {
	b, err := c.br.ReadByte()
	if err == nil {
		c.n++
	}
	return b, err
}

type member struct {
	cstart, cend int64 // compressed [start, end)
	dstart, dlen int64 // decompressed start, length
	extra        []byte
}

type memberWalker struct {
	cr      *countingReader
	zr      *gzip.Reader
	open    bool
	dpos    int64
	members []member
	diff    hash.Hash
}

func (w *memberWalker) Read(p []byte) (int, error) {
	for {
		if !w.open {
			if _, err := w.cr.br.Peek(1); err == io.EOF {
				return 0, io.EOF
			}
			start := w.cr.n
			var err error
			if w.zr == nil {
				w.zr, err = gzip.NewReader(w.cr)
			} else {
				err = w.zr.Reset(w.cr)
			}
			if err != nil {
				return 0, fmt.Errorf("gzip member at compressed offset %d: bad header: %v", start, err)
			}
			w.zr.Multistream(false)
			w.members = append(w.members, member{cstart: start, dstart: w.dpos, extra: append([]byte(nil), w.zr.Header.Extra...)})
			w.open = true
		}
		n, err := w.zr.Read(p)
		w.dpos += int64(n)
		w.diff.Write(p[:n])
		if err == io.EOF {
			m := &w.members[len(w.members)-1]
			m.cend = w.cr.n
			m.dlen = w.dpos - m.dstart
			w.open = false
			if n > 0 {
				return n, nil
			}
			continue
		}
		if err != nil {
			return n, fmt.Errorf("gzip member at compressed offset %d: %v", w.members[len(w.members)-1].cstart, err)
		}
		return n, nil
	}
}

type posReader struct {
	r io.Reader
	n int64
}

func (p *posReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.n += int64(n)
	return n, err
}

// ---------------------------------------------------------------------------
// Tar entry info, for the source and for the blob's decompressed stream.

type tarInfo struct {
	name       string // cleaned
	hdr        *tar.Header
	typ        string // TOC type
	sha        string // sha256 hex of content (regular files)
	dataOffset int64  // decompressed offset of the payload (blob stream only)
	index      int    // position in the archive
}

func tocType(h *tar.Header) (string, error) {
	switch h.Typeflag {
	case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse:
		return "reg", nil
	case tar.TypeLink:
		return "hardlink", nil
	case tar.TypeSymlink:
		return "symlink", nil
	case tar.TypeDir:
		return "dir", nil
	case tar.TypeChar:
		return "char", nil
	case tar.TypeBlock:
		return "block", nil
	case tar.TypeFifo:
		return "fifo", nil
	}
	return "", fmt.Errorf("unsupported tar entry type %q", h.Typeflag)
}

func xattrsOf(h *tar.Header) map[string]string {
	m := map[string]string{}
	for k, v := range h.PAXRecords {
		if strings.HasPrefix(k, xattrPrefix) {
			m[k[len(xattrPrefix):]] = v
		}
	}
	return m
}

func hashReader(r io.Reader) (string, int64, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	return hex.EncodeToString(h.Sum(nil)), n, err
}

type sourceLayer struct {
	order  []string // cleaned names, duplicates resolved (last wins, last position)
	byName map[string]*tarInfo
}

func openSource(p string, gz bool) (io.Reader, func(), error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, nil, err
	}
	br := bufio.NewReaderSize(f, 1<<20)
	magic, _ := br.Peek(3)
	if gz || bytes.Equal(magic, []byte{0x1f, 0x8b, 0x08}) {
		zr, err := gzip.NewReader(br)
		if err != nil {
			f.Close()
			return nil, nil, err
		}
		return zr, func() { f.Close() }, nil
	}
	return br, func() { f.Close() }, nil
}

func readSource(p string, gz bool) *sourceLayer {
	r, closeFn, err := openSource(p, gz)
	must(err, "open source %s", p)
	defer closeFn()
	tr := tar.NewReader(r)
	s := &sourceLayer{byName: map[string]*tarInfo{}}
	for i := 0; ; i++ {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		must(err, "source tar: reading entry %d", i)
		name := cleanName(h.Name)
		switch name {
		case noPrefetchLandmark, prefetchLandmark, tocName:
			continue // the converter drops these
		}
		typ, err := tocType(h)
		must(err, "source tar entry %s", display(name))
		ti := &tarInfo{name: name, hdr: h, typ: typ, index: i}
		if typ == "reg" {
			sum, n, err := hashReader(tr)
			must(err, "source tar: reading %s", display(name))
			if n != h.Size {
				fail("source tar: %s: read %d bytes, header says %d", display(name), n, h.Size)
			}
			ti.sha = sum
		}
		if _, dup := s.byName[name]; dup {
			for j, o := range s.order {
				if o == name {
					s.order = append(s.order[:j], s.order[j+1:]...)
					break
				}
			}
		}
		s.byName[name] = ti
		s.order = append(s.order, name)
	}
	return s
}

// firstDiff finds the first differing byte of a source entry and the blob's file.
func firstDiff(srcPath string, gz bool, name string, index int, blob io.Reader) string {
	r, closeFn, err := openSource(srcPath, gz)
	if err != nil {
		return "?"
	}
	defer closeFn()
	tr := tar.NewReader(r)
	for i := 0; ; i++ {
		_, err := tr.Next()
		if err != nil {
			return "?"
		}
		if i == index {
			break
		}
	}
	a := bufio.NewReaderSize(tr, 1<<16)
	b := bufio.NewReaderSize(blob, 1<<16)
	var off int64
	for {
		x, ea := a.ReadByte()
		y, eb := b.ReadByte()
		if ea != nil || eb != nil {
			if ea == eb {
				return "none found"
			}
			return fmt.Sprintf("one side ends at byte %d", off)
		}
		if x != y {
			return fmt.Sprintf("byte %d: source %#02x, blob %#02x", off, x, y)
		}
		off++
	}
}

// ---------------------------------------------------------------------------
// Comparisons.

func modeStr(m int64) string { return fmt.Sprintf("%#o", m) }

func compareTOCWithSource(e *rawEntry, s *tarInfo) {
	n := display(s.name)
	h := s.hdr
	if e.Type != s.typ {
		fail("TOC vs source: %s: type %s, source %s", n, e.Type, s.typ)
	}
	if e.Mode != h.Mode {
		fail("TOC vs source: %s: mode %s, source %s", n, modeStr(e.Mode), modeStr(h.Mode))
	}
	if e.UID != h.Uid || e.GID != h.Gid {
		fail("TOC vs source: %s: uid/gid %d/%d, source %d/%d", n, e.UID, e.GID, h.Uid, h.Gid)
	}
	// The writer omits a name that equals the last one emitted for the same id.
	if e.Uname != "" && e.Uname != h.Uname {
		fail("TOC vs source: %s: userName %q, source %q", n, e.Uname, h.Uname)
	}
	if e.Uname == "" && h.Uname != "" && h.Uname != e.fillUname {
		fail("TOC vs source: %s: userName absent (implies %q), source %q", n, e.fillUname, h.Uname)
	}
	if e.Gname != "" && e.Gname != h.Gname {
		fail("TOC vs source: %s: groupName %q, source %q", n, e.Gname, h.Gname)
	}
	if e.Gname == "" && h.Gname != "" && h.Gname != e.fillGname {
		fail("TOC vs source: %s: groupName absent (implies %q), source %q", n, e.fillGname, h.Gname)
	}
	// modtime: RFC3339 UTC seconds, empty for the zero time and for Unix 0.
	if e.ModTime == "" {
		if !(h.ModTime.IsZero() || h.ModTime.Unix() == 0) {
			fail("TOC vs source: %s: modtime absent, source %s", n, h.ModTime.UTC().Format(time.RFC3339))
		}
	} else {
		t, err := time.Parse(time.RFC3339, e.ModTime)
		must(err, "TOC entry %s: modtime %q", n, e.ModTime)
		if t.Unix() != h.ModTime.Round(time.Second).Unix() {
			fail("TOC vs source: %s: modtime %s, source %s", n, e.ModTime, h.ModTime.UTC().Format(time.RFC3339Nano))
		}
	}
	switch e.Type {
	case "symlink":
		if e.LinkName != h.Linkname {
			fail("TOC vs source: %s: linkName %q, source %q", n, e.LinkName, h.Linkname)
		}
	case "hardlink":
		if cleanName(e.LinkName) != cleanName(h.Linkname) {
			fail("TOC vs source: %s: hardlink target %q, source %q", n, e.LinkName, h.Linkname)
		}
	case "char", "block":
		if int64(e.DevMajor) != h.Devmajor || int64(e.DevMinor) != h.Devminor {
			fail("TOC vs source: %s: device %d:%d, source %d:%d", n, e.DevMajor, e.DevMinor, h.Devmajor, h.Devminor)
		}
	case "reg":
		if e.Size != h.Size {
			fail("TOC vs source: %s: size %d, source %d", n, e.Size, h.Size)
		}
		if e.keys["digest"] && e.Digest != "sha256:"+s.sha {
			fail("TOC vs source: %s: digest %s, source content sha256:%s", n, e.Digest, s.sha)
		}
		if !e.keys["digest"] && e.Size > 0 {
			fail("TOC entry %s: regular file without digest", n)
		}
	}
	if e.Type != "char" && e.Type != "block" && (e.DevMajor != 0 || e.DevMinor != 0) {
		fail("TOC entry %s: device numbers on a %s", n, e.Type)
	}
	if e.Type != "symlink" && e.Type != "hardlink" && e.LinkName != "" {
		fail("TOC entry %s: linkName on a %s", n, e.Type)
	}
	sx := xattrsOf(h)
	if len(sx) != len(e.Xattrs) {
		fail("TOC vs source: %s: %d xattrs %v, source %d %v", n, len(e.Xattrs), xattrKeys(e.Xattrs), len(sx), strKeys(sx))
	}
	for k, v := range sx {
		tv, ok := e.Xattrs[k]
		if !ok {
			fail("TOC vs source: %s: xattr %q missing", n, k)
		}
		if string(tv) != v {
			fail("TOC vs source: %s: xattr %q = %x, source %x", n, k, tv, v)
		}
	}
}

func xattrKeys(m map[string][]byte) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func strKeys(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func compareTarWithSource(b, s *tarInfo) {
	n := display(s.name)
	x, y := b.hdr, s.hdr
	if b.typ != s.typ {
		fail("tar stream vs source: %s: type %s, source %s", n, b.typ, s.typ)
	}
	if x.Mode != y.Mode {
		fail("tar stream vs source: %s: mode %s, source %s", n, modeStr(x.Mode), modeStr(y.Mode))
	}
	if x.Uid != y.Uid || x.Gid != y.Gid {
		fail("tar stream vs source: %s: uid/gid %d/%d, source %d/%d", n, x.Uid, x.Gid, y.Uid, y.Gid)
	}
	if x.Uname != y.Uname || x.Gname != y.Gname {
		fail("tar stream vs source: %s: owner names %q/%q, source %q/%q", n, x.Uname, x.Gname, y.Uname, y.Gname)
	}
	if x.ModTime.Unix() != y.ModTime.Unix() {
		fail("tar stream vs source: %s: mtime %s, source %s", n, x.ModTime.UTC().Format(time.RFC3339Nano), y.ModTime.UTC().Format(time.RFC3339Nano))
	}
	switch s.typ {
	case "symlink":
		if x.Linkname != y.Linkname {
			fail("tar stream vs source: %s: link target %q, source %q", n, x.Linkname, y.Linkname)
		}
	case "hardlink":
		if cleanName(x.Linkname) != cleanName(y.Linkname) {
			fail("tar stream vs source: %s: hardlink target %q, source %q", n, x.Linkname, y.Linkname)
		}
	case "char", "block":
		if x.Devmajor != y.Devmajor || x.Devminor != y.Devminor {
			fail("tar stream vs source: %s: device %d:%d, source %d:%d", n, x.Devmajor, x.Devminor, y.Devmajor, y.Devminor)
		}
	case "reg":
		if x.Size != y.Size {
			fail("tar stream vs source: %s: size %d, source %d", n, x.Size, y.Size)
		}
		if b.sha != s.sha {
			fail("tar stream vs source: %s: content sha256:%s, source sha256:%s", n, b.sha, s.sha)
		}
	}
	bx, sx := xattrsOf(x), xattrsOf(y)
	if len(bx) != len(sx) {
		fail("tar stream vs source: %s: xattrs %v, source %v", n, strKeys(bx), strKeys(sx))
	}
	for k, v := range sx {
		if bv, ok := bx[k]; !ok || bv != v {
			fail("tar stream vs source: %s: xattr %q = %x, source %x", n, k, bv, v)
		}
	}
}

// ---------------------------------------------------------------------------

type summary struct {
	OK               bool   `json:"ok"`
	Error            string `json:"error,omitempty"`
	DiffID           string `json:"diff_id,omitempty"`
	TOCDigest        string `json:"toc_digest,omitempty"`
	Entries          int    `json:"entries"`
	Chunks           int    `json:"chunks"`
	Members          int    `json:"gzip_members"`
	BlobSize         int64  `json:"blob_size"`
	UncompressedSize int64  `json:"uncompressed_size"`
	TOCOffset        int64  `json:"toc_offset"`
	Landmark         string `json:"landmark,omitempty"`
	TrailingZeros    int64  `json:"trailing_zero_bytes"`
}

type options struct {
	blob, tocDigest, source string
	sourceGz, prefetch      bool
	prioritized             string
}

func main() {
	var o options
	var asJSON bool
	fs := flag.NewFlagSet("estargz-check", flag.ContinueOnError)
	fs.StringVar(&o.blob, "blob", "", "eStargz blob to check")
	fs.StringVar(&o.tocDigest, "toc-digest", "", "expected TOC digest (layer annotation containerd.io/snapshot/stargz/toc.digest)")
	fs.StringVar(&o.source, "source", "", "source layer (tar, or tar+gzip)")
	fs.BoolVar(&o.sourceGz, "source-gz", false, "source is gzip-compressed (also auto-detected)")
	fs.BoolVar(&o.prefetch, "prefetch-landmark", false, "expect .prefetch.landmark after the prioritized files instead of a leading .no.prefetch.landmark")
	fs.StringVar(&o.prioritized, "prioritized", "", "with --prefetch-landmark: file listing the prioritized paths (one per line) that must precede the landmark")
	fs.BoolVar(&asJSON, "json", false, "print a JSON summary")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if o.blob == "" || o.tocDigest == "" || o.source == "" || fs.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: estargz-check --blob BLOB --toc-digest sha256:... --source SOURCE.tar [--source-gz] [--prefetch-landmark [--prioritized LIST]] [--json]")
		os.Exit(2)
	}
	sum := &summary{}
	err := run(o, sum)
	if err != nil {
		sum.OK = false
		sum.Error = err.Error()
		if asJSON {
			json.NewEncoder(os.Stdout).Encode(sum)
		}
		fmt.Fprintf(os.Stderr, "estargz-check: FAIL: %s\n", err)
		os.Exit(1)
	}
	sum.OK = true
	if asJSON {
		json.NewEncoder(os.Stdout).Encode(sum)
	} else {
		fmt.Printf("OK: %d entries, %d chunks, %d gzip members, %d bytes uncompressed\n", sum.Entries, sum.Chunks, sum.Members, sum.UncompressedSize)
		fmt.Printf("diff_id %s\n", sum.DiffID)
	}
}

func run(o options, sum *summary) (err error) {
	defer func() {
		if r := recover(); r != nil {
			if ce, ok := r.(*checkError); ok {
				err = ce
				return
			}
			// the library can panic on malformed input; that is a failed check too
			err = fmt.Errorf("panic while checking: %v", r)
		}
	}()
	check(o, sum)
	return nil
}

func footerTemplate(tocOffset int64) []byte {
	b := []byte{0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff, 26, 0, 'S', 'G', 22, 0}
	b = append(b, []byte(fmt.Sprintf("%016xSTARGZ", tocOffset))...)
	b = append(b, 0x01, 0x00, 0x00, 0xff, 0xff)
	b = append(b, 0, 0, 0, 0, 0, 0, 0, 0)
	return b
}

func check(o options, sum *summary) {
	wantTOC, err := digest.Parse(o.tocDigest)
	must(err, "--toc-digest")

	f, err := os.Open(o.blob)
	must(err, "open blob")
	defer f.Close()
	st, err := f.Stat()
	must(err, "stat blob")
	size := st.Size()
	sum.BlobSize = size
	if size < footerSize+20 {
		fail("blob is only %d bytes", size)
	}

	// --- raw: footer ------------------------------------------------------
	footer := make([]byte, footerSize)
	_, err = f.ReadAt(footer, size-footerSize)
	must(err, "read footer")
	hexOff := string(footer[16:32])
	var tocOffset int64
	if _, err := fmt.Sscanf(hexOff, "%016x", &tocOffset); err != nil || fmt.Sprintf("%016x", tocOffset) != hexOff {
		fail("footer: TOC offset field %q is not 16 lowercase hex digits", hexOff)
	}
	if want := footerTemplate(tocOffset); !bytes.Equal(footer, want) {
		fail("footer: last 51 bytes\n  %x\nwant\n  %x", footer, want)
	}
	if tocOffset <= 0 || tocOffset >= size-footerSize {
		fail("footer: TOC offset %d outside the blob (size %d)", tocOffset, size)
	}
	sum.TOCOffset = tocOffset

	// --- raw: TOC member -----------------------------------------------------
	tocMember := io.NewSectionReader(f, tocOffset, size-footerSize-tocOffset)
	tcr := &countingReader{br: bufio.NewReader(tocMember)}
	zr, err := gzip.NewReader(tcr)
	must(err, "TOC member at offset %d: gzip header", tocOffset)
	zr.Multistream(false)
	ttr := tar.NewReader(zr)
	th, err := ttr.Next()
	must(err, "TOC member: first tar header")
	if th.Name != tocName || th.Typeflag != tar.TypeReg {
		fail("TOC member: first tar entry is %q (type %q), want %q", th.Name, th.Typeflag, tocName)
	}
	tocJSON, err := io.ReadAll(ttr)
	must(err, "TOC member: reading TOC JSON")
	if got := digest.FromBytes(tocJSON); got != wantTOC {
		fail("TOC JSON digest (over the whole %d-byte tar payload) is %s, want %s", len(tocJSON), got, wantTOC)
	}
	if _, err := ttr.Next(); err != io.EOF {
		fail("TOC member: expected end of archive after %s, got %v", tocName, err)
	}
	rest, err := io.ReadAll(zr)
	must(err, "TOC member: gzip stream")
	for _, c := range rest {
		if c != 0 {
			fail("TOC member: non-zero bytes after the end-of-archive blocks")
		}
	}
	if tcr.n != size-footerSize-tocOffset {
		fail("TOC member: gzip member ends at %d, footer starts at %d (TOC member must span up to the footer)", tocOffset+tcr.n, size-footerSize)
	}
	sum.TOCDigest = wantTOC.String()

	// --- library: Open, VerifyTOC ------------------------------------------------
	sr := io.NewSectionReader(f, 0, size)
	r, err := estargz.Open(sr)
	must(err, "estargz.Open")
	if r.TOCDigest() != wantTOC {
		fail("estargz.Open: TOC digest %s, want %s", r.TOCDigest(), wantTOC)
	}
	verifier, err := r.VerifyTOC(wantTOC)
	must(err, "VerifyTOC")

	// --- raw: TOC JSON shape -----------------------------------------------------
	toc := parseRawTOC(tocJSON, tocOffset)
	sum.Entries = len(toc.files)
	sum.Chunks = len(toc.allChunk)
	for _, c := range toc.allChunk {
		var magic [3]byte
		_, err := f.ReadAt(magic[:], c.offset)
		must(err, "read at offset %d", c.offset)
		if magic != [3]byte{0x1f, 0x8b, 0x08} {
			fail("TOC entry %s: bytes at offset %d are %x, not a gzip member (1f8b08)", display(c.name), c.offset, magic)
		}
	}

	// --- landmark placement ----------------------------------------------------
	if len(toc.files) == 0 {
		fail("TOC has no entries")
	}
	_, hasNo := toc.byName[noPrefetchLandmark]
	_, hasPre := toc.byName[prefetchLandmark]
	if !o.prefetch {
		if toc.files[0].clean != noPrefetchLandmark {
			fail("first TOC entry is %s, want %s", display(toc.files[0].clean), noPrefetchLandmark)
		}
		if hasPre {
			fail("TOC has both landmarks")
		}
		sum.Landmark = noPrefetchLandmark
	} else {
		if !hasPre || hasNo {
			fail("--prefetch-landmark: TOC must contain %s and not %s", prefetchLandmark, noPrefetchLandmark)
		}
		sum.Landmark = prefetchLandmark
	}
	var landmarkIdx int
	for i, e := range toc.files {
		if e.clean == sum.Landmark {
			landmarkIdx = i
		}
	}
	lm := toc.files[landmarkIdx]
	if lm.Type != "reg" || lm.Size != 1 {
		fail("landmark %s: type %s size %d, want a 1-byte regular file", lm.clean, lm.Type, lm.Size)
	}
	if o.prioritized != "" {
		data, err := os.ReadFile(o.prioritized)
		must(err, "read --prioritized")
		before := map[string]bool{}
		for _, e := range toc.files[:landmarkIdx] {
			before[e.clean] = true
		}
		for _, l := range strings.Split(string(data), "\n") {
			if strings.TrimSpace(l) == "" {
				continue
			}
			if !before[cleanName(l)] {
				fail("prioritized file %q is not before %s", l, prefetchLandmark)
			}
		}
	}

	// --- library: read every chunk through its verifier ------------------------
	regSHA := map[string]string{} // content sha256 as read through the library
	for _, e := range toc.files {
		if e.Type != "reg" {
			continue
		}
		fr, err := r.OpenFile(e.clean)
		must(err, "OpenFile(%s)", display(e.clean))
		if fr.Size() != e.Size {
			fail("OpenFile(%s): size %d, TOC says %d", display(e.clean), fr.Size(), e.Size)
		}
		whole := sha256.New()
		for _, c := range toc.chunks[e.clean] {
			ce, ok := r.ChunkEntryForOffset(e.clean, c.chunkOffset)
			if !ok {
				fail("ChunkEntryForOffset(%s, %d): not found", display(e.clean), c.chunkOffset)
			}
			if ce.Offset != c.offset || ce.ChunkOffset != c.chunkOffset || ce.ChunkSize != c.chunkSize {
				fail("library chunk for %s at %d is offset=%d chunkOffset=%d chunkSize=%d; TOC has %d/%d/%d",
					display(e.clean), c.chunkOffset, ce.Offset, ce.ChunkOffset, ce.ChunkSize, c.offset, c.chunkOffset, c.chunkSize)
			}
			v, err := verifier.Verifier(ce)
			must(err, "Verifier(%s chunk at %d)", display(e.clean), c.chunkOffset)
			const piece = 64 << 20
			for done := int64(0); done < c.chunkSize; {
				n := c.chunkSize - done
				if n > piece {
					n = piece
				}
				buf := make([]byte, n)
				got, err := fr.ReadAt(buf, c.chunkOffset+done)
				if err == io.EOF && int64(got) == n {
					err = nil
				}
				must(err, "reading %s [%d, +%d) via the library", display(e.clean), c.chunkOffset+done, n)
				v.Write(buf)
				whole.Write(buf)
				done += n
			}
			if !v.Verified() {
				fail("chunkDigest mismatch: %s chunk at %d (size %d, member offset %d), TOC says %s",
					display(e.clean), c.chunkOffset, c.chunkSize, c.offset, c.entry.ChunkDigest)
			}
		}
		got := hex.EncodeToString(whole.Sum(nil))
		if e.Size > 0 && e.Digest != "sha256:"+got {
			fail("%s: content read through the library has sha256:%s, TOC digest %s", display(e.clean), got, e.Digest)
		}
		regSHA[e.clean] = got
	}
	if landmark := regSHA[lm.clean]; landmark != hex.EncodeToString(sha256Of([]byte{0x0f})) {
		fail("landmark %s content is not the single byte 0x0f", lm.clean)
	}

	// --- raw: whole blob, member by member, as a tar --------------------------------
	walker := &memberWalker{cr: &countingReader{br: bufio.NewReaderSize(io.NewSectionReader(f, 0, size), 1<<20)}, diff: sha256.New()}
	pr := &posReader{r: walker}
	tr := tar.NewReader(pr)
	var stream []*tarInfo
	for i := 0; ; i++ {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		must(err, "decompressed blob: tar entry %d (Go archive/tar)", i)
		ti := &tarInfo{name: cleanName(h.Name), hdr: h, dataOffset: pr.n, index: i}
		ti.typ, err = tocType(h)
		must(err, "decompressed blob: entry %s", display(ti.name))
		if ti.typ == "reg" {
			s, n, err := hashReader(tr)
			must(err, "decompressed blob: reading %s", display(ti.name))
			if n != h.Size {
				fail("decompressed blob: %s: %d bytes, header says %d", display(ti.name), n, h.Size)
			}
			ti.sha = s
		}
		stream = append(stream, ti)
	}
	endOfArchive := pr.n
	_, err = io.Copy(io.Discard, walker)
	must(err, "decompressed blob after the end of archive")
	sum.TrailingZeros = walker.dpos - endOfArchive
	sum.UncompressedSize = walker.dpos
	sum.Members = len(walker.members)
	sum.DiffID = "sha256:" + hex.EncodeToString(walker.diff.Sum(nil))
	if walker.cr.n != size {
		fail("gzip members end at %d, blob size %d", walker.cr.n, size)
	}
	memberAt := map[int64]member{}
	for _, m := range walker.members {
		memberAt[m.cstart] = m
	}
	last := walker.members[len(walker.members)-1]
	if last.cstart != size-footerSize || last.dlen != 0 {
		fail("last gzip member starts at %d with %d bytes, want the empty footer member at %d", last.cstart, last.dlen, size-footerSize)
	}
	tm, ok := memberAt[tocOffset]
	if !ok {
		fail("TOC offset %d is not the start of a gzip member", tocOffset)
	}
	if len(walker.members) < 2 || walker.members[len(walker.members)-2].cstart != tocOffset {
		fail("the TOC member is not the last member before the footer")
	}
	if walker.members[0].cstart != 0 {
		fail("blob does not start with a gzip member")
	}

	// stream entries vs TOC entries, in order
	if len(stream) == 0 || stream[len(stream)-1].name != tocName {
		fail("last tar entry of the decompressed blob is not %s", tocName)
	}
	tocEntry := stream[len(stream)-1]
	if tocEntry.dataOffset-512 != tm.dstart {
		fail("TOC member starts at decompressed offset %d, but the %s header starts at %d", tm.dstart, tocName, tocEntry.dataOffset-512)
	}
	if tocEntry.sha != wantTOC.Hex() {
		fail("%s in the tar stream has sha256:%s, want %s", tocName, tocEntry.sha, wantTOC)
	}
	if endOfArchive > tm.dstart+tm.dlen {
		fail("end of archive lies after the TOC member")
	}
	stream = stream[:len(stream)-1]
	if len(stream) != len(toc.files) {
		fail("decompressed blob has %d tar entries (without %s), TOC has %d entries", len(stream), tocName, len(toc.files))
	}
	for i, b := range stream {
		e := toc.files[i]
		if b.name != e.clean {
			fail("entry %d: tar stream has %s, TOC has %s (order must match)", i, display(b.name), display(e.clean))
		}
		if b.typ != e.Type {
			fail("entry %s: tar type %s, TOC type %s", display(b.name), b.typ, e.Type)
		}
		if b.typ == "reg" {
			if b.hdr.Size != e.Size {
				fail("entry %s: tar size %d, TOC size %d", display(b.name), b.hdr.Size, e.Size)
			}
			if b.sha != regSHA[e.clean] {
				fail("entry %s: tar stream content sha256:%s, library read sha256:%s", display(b.name), b.sha, regSHA[e.clean])
			}
			for _, c := range toc.chunks[e.clean] {
				m, ok := memberAt[c.offset]
				if !ok {
					fail("entry %s chunk at %d: offset %d is not the start of a gzip member", display(b.name), c.chunkOffset, c.offset)
				}
				if want := b.dataOffset + c.chunkOffset; m.dstart != want {
					fail("entry %s chunk at %d: member at %d starts at decompressed offset %d, payload byte is at %d", display(b.name), c.chunkOffset, c.offset, m.dstart, want)
				}
			}
		}
		if b.typ == "symlink" && b.hdr.Linkname != e.LinkName {
			fail("entry %s: tar link target %q, TOC %q", display(b.name), b.hdr.Linkname, e.LinkName)
		}
	}
	if !o.prefetch && (len(stream) == 0 || stream[0].name != noPrefetchLandmark) {
		fail("first tar entry of the decompressed blob is not %s", noPrefetchLandmark)
	}

	// --- source comparison -------------------------------------------------------
	src := readSource(o.source, o.sourceGz)
	var blobNames []string
	for _, e := range toc.files {
		if e.clean != sum.Landmark {
			blobNames = append(blobNames, e.clean)
		}
	}
	srcSet := map[string]bool{}
	for _, n := range src.order {
		srcSet[n] = true
	}
	blobSet := map[string]bool{}
	for _, n := range blobNames {
		blobSet[n] = true
	}
	var missing, extra []string
	for _, n := range src.order {
		if !blobSet[n] {
			missing = append(missing, display(n))
		}
	}
	for _, n := range blobNames {
		if !srcSet[n] {
			extra = append(extra, display(n))
		}
	}
	if len(missing) > 0 || len(extra) > 0 {
		fail("entry names differ: %d missing from the blob %v, %d not in the source %v", len(missing), head(missing), len(extra), head(extra))
	}
	// order: without prioritization the blob keeps the source order; with it, the
	// entries after the landmark keep their relative source order.
	if !o.prefetch {
		for i, n := range blobNames {
			if src.order[i] != n {
				fail("entry order differs at %d: blob %s, source %s", i, display(n), display(src.order[i]))
			}
		}
	} else {
		lastIdx := -1
		for _, e := range toc.files[landmarkIdx+1:] {
			idx := src.byName[e.clean].index
			if idx < lastIdx {
				fail("entries after %s are not in source order at %s", prefetchLandmark, display(e.clean))
			}
			lastIdx = idx
		}
	}
	streamByName := map[string]*tarInfo{}
	for _, b := range stream {
		streamByName[b.name] = b
	}
	for _, n := range src.order {
		s := src.byName[n]
		e := toc.byName[n]
		compareTOCWithSource(e, s)
		compareTarWithSource(streamByName[n], s)
		if s.typ == "reg" && regSHA[n] != s.sha {
			where := "?"
			if fr, err := r.OpenFile(n); err == nil {
				where = firstDiff(o.source, o.sourceGz, n, s.index, fr)
			}
			fail("content of %s differs from the source (library read sha256:%s, source sha256:%s; first difference: %s)",
				display(n), regSHA[n], s.sha, where)
		}
	}
}

func sha256Of(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}

func head(s []string) []string {
	if len(s) > 10 {
		return append(s[:10:10], "...")
	}
	return s
}
