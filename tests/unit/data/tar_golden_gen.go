// Generates tar_golden.txt: the header bytes Go's archive/tar Writer produces for a set of
// entries, one "<case> <hex>" line each. tests/unit/test_tar.cpp builds the same entries and
// checks that TarWriter::encode_header gives identical bytes.
//
// Regenerate (Go 1.19 from Debian's golang-go):
//   cd tests/unit/data && go run tar_golden_gen.go > tar_golden.txt
//
// Cases without sub-second times use Format unset (FormatUnknown), the default of Go callers;
// the ones with sub-second mtime or atime/ctime use FormatPAX, the mode TarWriter mirrors.
package main

import (
	"archive/tar"
	"bytes"
	"encoding/hex"
	"fmt"
	"strings"
	"time"
)

type golden struct {
	name string
	hdr  tar.Header
}

func main() {
	long150 := strings.Repeat("d", 60) + "/" + strings.Repeat("e", 50) + "/" + strings.Repeat("f", 39)
	long300 := strings.Repeat("a", 120) + "/" + strings.Repeat("b", 120) + "/" + strings.Repeat("c", 58)
	longTarget := strings.Repeat("t", 150)
	base := time.Unix(1700000000, 0)
	cases := []golden{
		{"regular", tar.Header{Typeflag: tar.TypeReg, Name: "usr/bin/hello", Mode: 0755, Uname: "root", Gname: "root", Size: 1234, ModTime: base}},
		{"directory", tar.Header{Typeflag: tar.TypeDir, Name: "etc/", Mode: 0755, Uid: 1000, Gid: 1000, Uname: "user", Gname: "users", ModTime: time.Unix(1600000000, 0)}},
		{"symlink", tar.Header{Typeflag: tar.TypeSymlink, Name: "lib/libfoo.so", Linkname: "libfoo.so.1", Mode: 0777, ModTime: base}},
		{"hardlink", tar.Header{Typeflag: tar.TypeLink, Name: "bin/b", Linkname: "bin/a", Mode: 0644, ModTime: base}},
		{"char_device", tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0666, Devmajor: 1, Devminor: 3, ModTime: base}},
		{"block_device", tar.Header{Typeflag: tar.TypeBlock, Name: "dev/sda", Mode: 0660, Devmajor: 8, Devminor: 0, Gid: 6, Gname: "disk", ModTime: base}},
		{"fifo", tar.Header{Typeflag: tar.TypeFifo, Name: "run/fifo", Mode: 0600, ModTime: base}},
		{"setuid", tar.Header{Typeflag: tar.TypeReg, Name: "usr/bin/su", Mode: 04755, Size: 10, ModTime: base}},
		{"whiteout", tar.Header{Typeflag: tar.TypeReg, Name: "etc/.wh.passwd", Mode: 0, ModTime: base}},
		{"opaque_whiteout", tar.Header{Typeflag: tar.TypeReg, Name: "var/.wh..wh..opq", Mode: 0, ModTime: base}},
		{"epoch_zero", tar.Header{Typeflag: tar.TypeReg, Name: "zero", Mode: 0644, ModTime: time.Unix(0, 0)}},
		{"mtime_2100", tar.Header{Typeflag: tar.TypeReg, Name: "future", Mode: 0644, ModTime: time.Unix(4102444800, 0)}},
		{"long_name_split", tar.Header{Typeflag: tar.TypeReg, Name: long150, Mode: 0644, Size: 5, ModTime: base}},
		{"long_name_pax", tar.Header{Typeflag: tar.TypeReg, Name: long300, Mode: 0644, Size: 5, ModTime: base}},
		{"long_dir_pax", tar.Header{Typeflag: tar.TypeDir, Name: long300 + "/", Mode: 0755, ModTime: base}},
		{"unicode_name", tar.Header{Typeflag: tar.TypeReg, Name: "données/ñandú-文件.txt", Mode: 0644, Size: 3, ModTime: base}},
		{"long_link_target", tar.Header{Typeflag: tar.TypeSymlink, Name: "link", Linkname: longTarget, Mode: 0777, ModTime: base}},
		{"long_uname", tar.Header{Typeflag: tar.TypeReg, Name: "f", Uname: strings.Repeat("u", 40), Gname: "g", Mode: 0644, ModTime: base}},
		{"big_uid", tar.Header{Typeflag: tar.TypeReg, Name: "f", Uid: 3000000, Gid: 4000000, Mode: 0644, ModTime: base}},
		{"big_size", tar.Header{Typeflag: tar.TypeReg, Name: "big", Size: 10 << 30, Mode: 0644, ModTime: base}},
		{"negative_mtime", tar.Header{Typeflag: tar.TypeReg, Name: "old", Mode: 0644, ModTime: time.Unix(-1000000, 0)}},
		{"mtime_beyond_octal", tar.Header{Typeflag: tar.TypeReg, Name: "far", Mode: 0644, ModTime: time.Unix(10000000000, 0)}},
		{"xattrs", tar.Header{Typeflag: tar.TypeReg, Name: "usr/bin/ping", Mode: 0755, Size: 7, ModTime: base,
			Xattrs: map[string]string{"security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", "user.comment": "hi=there"}}},
		{"other_pax", tar.Header{Typeflag: tar.TypeReg, Name: "f", Mode: 0644, ModTime: base, PAXRecords: map[string]string{"comment": "hello", "LIBARCHIVE.creationtime": "1"}}},
		{"nano_mtime", tar.Header{Typeflag: tar.TypeReg, Name: "nano", Mode: 0644, ModTime: time.Unix(1700000000, 500), Format: tar.FormatPAX}},
		{"negative_nano_mtime", tar.Header{Typeflag: tar.TypeReg, Name: "nano-old", Mode: 0644, ModTime: time.Unix(-2, 500000000), Format: tar.FormatPAX}},
		{"atime_ctime", tar.Header{Typeflag: tar.TypeReg, Name: "times", Mode: 0644, ModTime: base, AccessTime: time.Unix(1700000001, 250000000), ChangeTime: time.Unix(1700000002, 0), Format: tar.FormatPAX}},
		{"dot_slash_pax", tar.Header{Typeflag: tar.TypeReg, Name: "./a//b/./ü", Mode: 0644, ModTime: base}},
	}
	for _, c := range cases {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		if err := tw.WriteHeader(&c.hdr); err != nil {
			panic(fmt.Sprintf("%s: %v", c.name, err))
		}
		fmt.Printf("%s %s\n", c.name, hex.EncodeToString(buf.Bytes()))
	}
}
