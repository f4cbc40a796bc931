// estargz-ref-build: converts a layer with the reference estargz.Build
// (github.com/containerd/stargz-snapshotter/estargz, Debian 0.12) and reports timing.
//
//	estargz-ref-build IN.tar[.gz] OUT.blob [--chunk-size N] [--level N] [--procs N]
//	                  [--prioritized LIST]
//
// Defaults are the library's: gzip level 9 (gzip.BestCompression, see
// estargz.WithCompressionLevel), 4 MiB chunks, GOMAXPROCS sub-blobs built in
// parallel (the output bytes depend on GOMAXPROCS; --procs sets it), a leading
// .no.prefetch.landmark (or .prefetch.landmark after the files listed in
// --prioritized, one path per line).
//
// Prints one JSON object:
//
//	{"toc_digest":"sha256:...","diff_id":"sha256:...","size":N,"seconds":S,
//	 "mb_per_s":R,"input_bytes":N,"uncompressed_input_bytes":N,"gomaxprocs":N,...}
//
// mb_per_s = uncompressed input tar bytes / 1e6 / seconds, where seconds covers
// estargz.Build and writing the whole blob to OUT (the library's work is partly lazy:
// the TOC, footer and diffID are produced while the blob is read).
package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
)

type result struct {
	TOCDigest        string  `json:"toc_digest"`
	DiffID           string  `json:"diff_id"`
	Size             int64   `json:"size"`
	Seconds          float64 `json:"seconds"`
	MBPerS           float64 `json:"mb_per_s"`
	InputBytes       int64   `json:"input_bytes"`
	UncompressedIn   int64   `json:"uncompressed_input_bytes"`
	GOMAXPROCS       int     `json:"gomaxprocs"`
	CompressionLevel int     `json:"level"`
	ChunkSize        int     `json:"chunk_size"`
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: estargz-ref-build IN.tar[.gz] OUT.blob [--chunk-size N] [--level N] [--procs N] [--prioritized LIST]")
	os.Exit(2)
}

func die(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "estargz-ref-build: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	var pos []string
	level := gzip.BestCompression
	chunkSize := 0
	procs := 0
	prioritized := ""
	args := os.Args[1:]
	intArg := func(i int, name string) int {
		if i >= len(args) {
			usage()
		}
		v, err := strconv.Atoi(args[i])
		if err != nil {
			die("%s: %v", name, err)
		}
		return v
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if strings.HasPrefix(a, "-") && strings.Contains(a, "=") {
			kv := strings.SplitN(a, "=", 2)
			args = append(args[:i+1], append([]string{kv[1]}, args[i+1:]...)...)
			a = kv[0]
		}
		switch strings.TrimLeft(a, "-") {
		case "chunk-size":
			i++
			chunkSize = intArg(i, a)
		case "level":
			i++
			level = intArg(i, a)
		case "procs":
			i++
			procs = intArg(i, a)
		case "prioritized":
			i++
			if i >= len(args) {
				usage()
			}
			prioritized = args[i]
		case "h", "help":
			usage()
		default:
			if strings.HasPrefix(a, "-") {
				usage()
			}
			pos = append(pos, a)
		}
	}
	if len(pos) != 2 {
		usage()
	}
	if procs > 0 {
		runtime.GOMAXPROCS(procs)
	}
	in, out := pos[0], pos[1]

	f, err := os.Open(in)
	if err != nil {
		die("%v", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		die("%v", err)
	}
	uncompressed, err := uncompressedSize(f)
	if err != nil {
		die("reading %s: %v", in, err)
	}

	opts := []estargz.Option{estargz.WithCompressionLevel(level), estargz.WithChunkSize(chunkSize)}
	if prioritized != "" {
		data, err := os.ReadFile(prioritized)
		if err != nil {
			die("%v", err)
		}
		var files []string
		for _, l := range strings.Split(string(data), "\n") {
			if strings.TrimSpace(l) != "" {
				files = append(files, l)
			}
		}
		opts = append(opts, estargz.WithPrioritizedFiles(files))
	}

	o, err := os.Create(out)
	if err != nil {
		die("%v", err)
	}
	start := time.Now()
	blob, err := estargz.Build(io.NewSectionReader(f, 0, st.Size()), opts...)
	if err != nil {
		os.Remove(out)
		die("estargz.Build: %v", err)
	}
	n, err := io.Copy(o, blob)
	if err != nil {
		os.Remove(out)
		die("writing blob: %v", err)
	}
	if err := blob.Close(); err != nil {
		die("closing blob: %v", err)
	}
	if err := o.Close(); err != nil {
		die("%v", err)
	}
	secs := time.Since(start).Seconds()
	cs := chunkSize
	if cs <= 0 {
		cs = 4 << 20
	}
	res := result{
		TOCDigest:        blob.TOCDigest().String(),
		DiffID:           blob.DiffID().String(),
		Size:             n,
		Seconds:          secs,
		MBPerS:           float64(uncompressed) / 1e6 / secs,
		InputBytes:       st.Size(),
		UncompressedIn:   uncompressed,
		GOMAXPROCS:       runtime.GOMAXPROCS(0),
		CompressionLevel: level,
		ChunkSize:        cs,
	}
	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(res); err != nil {
		die("%v", err)
	}
}

// uncompressedSize returns the size of the input tar, decompressing it if gzip.
func uncompressedSize(f *os.File) (int64, error) {
	br := bufio.NewReaderSize(io.NewSectionReader(f, 0, 1<<62), 1<<20)
	magic, _ := br.Peek(3)
	if !bytes.Equal(magic, []byte{0x1f, 0x8b, 0x08}) {
		st, err := f.Stat()
		if err != nil {
			return 0, err
		}
		return st.Size(), nil
	}
	zr, err := gzip.NewReader(br)
	if err != nil {
		return 0, err
	}
	return io.Copy(io.Discard, zr)
}
