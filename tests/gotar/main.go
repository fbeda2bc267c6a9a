// Command gotar is the test suite's reference for how a container runtime sees a tar layer.
//
// It reads a tar with Go's archive/tar (the reader containerd, moby and containers/storage use)
// and applies it to an empty in-memory tree with the rules of containerd's archive.Apply
// (archive/tar.go, applyNaive + createTarFile) and moby's pkg/archive: names are
// filepath.Clean'ed, parents resolved through symlinks inside the root, missing parents made
// 0755 root:root, an existing path removed unless a directory meets a directory, PAX global
// headers skipped, only SCHILY.xattr.* records applied, unknown typeflags refused, times
// bounded to [1970, 2262] (boundTime), directory times set at the end. Hard links share the
// inode and their own header's owner and time are applied to it (Lchown/Chtimes on the new
// name). Whiteouts follow -mode: "naive" (the bottom layer: .wh.NAME removes NAME, an opaque
// marker removes what this layer did not unpack) or "overlay" (OverlayConvertWhiteout: a 0:0
// character device, or trusted.overlay.opaque=y).
//
//	gotar apply [-mode naive|overlay] FILE   print the tree (or the error) as JSON
//	gotar write < SPEC.json > OUT.tar        write a tar with Go's writer
//	gotar segments FILE                      each regular file's non-zero 4 KiB runs
//
// Only the standard library is used, so it builds offline.
package main

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

type node struct {
	Type     string            `json:"type"`
	Mode     int64             `json:"mode"`
	UID      int               `json:"uid"`
	GID      int               `json:"gid"`
	MtimeNs  int64             `json:"mtime_ns"`
	Size     int64             `json:"size"`
	Sha256   string            `json:"sha256,omitempty"`
	Target   string            `json:"target,omitempty"` // hex
	Major    int64             `json:"major"`
	Minor    int64             `json:"minor"`
	Xattrs   map[string]string `json:"xattrs"` // hex name -> hex value
	Implicit bool              `json:"implicit"`
	Ino      int               `json:"ino"`
	children map[string]*node
}

type tree struct {
	root     *node
	nextIno  int
	unpacked map[string]bool
}

func (t *tree) newNode(typ string) *node {
	t.nextIno++
	n := &node{Type: typ, Xattrs: map[string]string{}, Ino: t.nextIno}
	if typ == "dir" {
		n.children = map[string]*node{}
	}
	return n
}

func split(p string) []string {
	var out []string
	for _, c := range strings.Split(p, "/") {
		if c != "" {
			out = append(out, c)
		}
	}
	return out
}

func (t *tree) lookup(comps []string) *node {
	n := t.root
	for _, c := range comps {
		if n == nil || n.Type != "dir" {
			return nil
		}
		n = n.children[c]
	}
	return n
}

// rootPath resolves a path inside the root, following symlinks and clamping ".." at the root
// (continuity's fs.RootPath).
func (t *tree) rootPath(p string) ([]string, error) {
	var resolved []string
	queue := strings.Split(p, "/")
	links := 0
	for len(queue) > 0 {
		c := queue[0]
		queue = queue[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(resolved) > 0 {
				resolved = resolved[:len(resolved)-1]
			}
			continue
		}
		next := append(append([]string{}, resolved...), c)
		if n := t.lookup(next); n != nil && n.Type == "symlink" {
			links++
			if links > 255 {
				return nil, errors.New("too many links")
			}
			target := mustHex(n.Target)
			if strings.HasPrefix(target, "/") {
				resolved = nil
			}
			queue = append(strings.Split(target, "/"), queue...)
			continue
		}
		resolved = next
	}
	return resolved, nil
}

func mustHex(s string) string {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func (t *tree) mkparent(comps []string) error {
	n := t.root
	for i, c := range comps {
		child := n.children[c]
		if child == nil {
			child = t.newNode("dir")
			child.Mode, child.Implicit = 0o755, true
			n.children[c] = child
		} else if child.Type != "dir" {
			return fmt.Errorf("mkparent %s: not a directory", strings.Join(comps[:i+1], "/"))
		}
		n = child
	}
	return nil
}

func (t *tree) remove(comps []string) {
	if len(comps) == 0 {
		return
	}
	parent := t.lookup(comps[:len(comps)-1])
	if parent != nil && parent.Type == "dir" {
		delete(parent.children, comps[len(comps)-1])
	}
}

func (t *tree) put(comps []string, n *node) error {
	parent := t.lookup(comps[:len(comps)-1])
	if parent == nil || parent.Type != "dir" {
		return fmt.Errorf("%s: parent is not a directory", strings.Join(comps, "/"))
	}
	parent.children[comps[len(comps)-1]] = n
	return nil
}

var (
	minTime = time.Unix(0, 0)
	maxTime = time.Unix(0, 0).Add(1<<63 - 1)
)

func boundTime(t time.Time) int64 {
	if t.Before(minTime) || t.After(maxTime) {
		return 0
	}
	return t.UnixNano()
}

func setxattrs(n *node, hdr *tar.Header) error {
	keys := make([]string, 0, len(hdr.PAXRecords))
	for k := range hdr.PAXRecords {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !strings.HasPrefix(k, "SCHILY.xattr.") {
			continue
		}
		name, value := k[len("SCHILY.xattr."):], hdr.PAXRecords[k]
		known := false
		for _, prefix := range []string{"user.", "trusted.", "security.", "system."} {
			if strings.HasPrefix(name, prefix) {
				known = len(name) > len(prefix)
			}
		}
		if !known {
			continue // EOPNOTSUPP from lsetxattr: containerd logs and skips it
		}
		if len(name) > 255 || len(value) > 65536 {
			return fmt.Errorf("setxattr %q: out of range", name)
		}
		if strings.HasPrefix(name, "user.") && n.Type != "reg" && n.Type != "dir" {
			return fmt.Errorf("setxattr %q on a %s: operation not permitted", name, n.Type)
		}
		n.Xattrs[hex.EncodeToString([]byte(name))] = hex.EncodeToString([]byte(value))
	}
	return nil
}

func apply(r io.Reader, mode string) (*tree, error) {
	t := &tree{unpacked: map[string]bool{}}
	t.root = t.newNode("dir")
	t.root.Mode = 0o755
	tr := tar.NewReader(r)
	var dirs []*tar.Header
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("reading: %w", err)
		}
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			continue // moby pkg/archive: "ignore XGlobalHeader early"
		}
		hdr.Name = filepath.Clean(hdr.Name)
		pdir, base := filepath.Split(hdr.Name)
		ppath, err := t.rootPath(pdir)
		if err != nil {
			return nil, err
		}
		pathComps := append(append([]string{}, ppath...), split(filepath.Join("/", base))...)
		if len(pathComps) == 0 {
			continue // "resolved to root"
		}
		if len(ppath) > 0 {
			if err := t.mkparent(ppath); err != nil {
				return nil, err
			}
		}
		key := strings.Join(pathComps, "/")
		if strings.HasPrefix(hdr.Name, ".wh..wh.") && hdr.Name != ".wh..wh..opq" {
			continue // AUFS metadata
		}
		if strings.HasPrefix(base, ".wh.") {
			dirComps := pathComps[:len(pathComps)-1]
			dir := t.lookup(dirComps)
			if base == ".wh..wh..opq" {
				if mode == "overlay" {
					dir.Xattrs[hex.EncodeToString([]byte("trusted.overlay.opaque"))] = hex.EncodeToString([]byte("y"))
					continue
				}
				t.opaqueNaive(dirComps, dir)
				continue
			}
			orig := base[len(".wh."):]
			if orig == "" || orig == "." || orig == ".." || strings.Contains(orig, "/") {
				return nil, fmt.Errorf("invalid whiteout name: %v", base)
			}
			origComps := append(append([]string{}, dirComps...), orig)
			if mode == "overlay" {
				if dir.children[orig] != nil {
					return nil, fmt.Errorf("mknod %s: file exists", strings.Join(origComps, "/"))
				}
				wh := t.newNode("chr")
				wh.UID, wh.GID = hdr.Uid, hdr.Gid
				wh.MtimeNs = -1 // the time of extraction
				dir.children[orig] = wh
			} else {
				t.remove(origComps)
			}
			continue
		}
		if existing := t.lookup(pathComps); existing != nil {
			if !(existing.Type == "dir" && hdr.Typeflag == tar.TypeDir) {
				t.remove(pathComps)
			}
		}
		if err := t.create(pathComps, hdr, tr); err != nil {
			return nil, fmt.Errorf("%s: %w", hdr.Name, err)
		}
		if hdr.Typeflag == tar.TypeDir {
			dirs = append(dirs, hdr)
		}
		t.unpacked[key] = true
	}
	for _, hdr := range dirs {
		comps, err := t.rootPath(hdr.Name)
		if err != nil {
			return nil, err
		}
		n := t.lookup(comps)
		if n == nil {
			return nil, fmt.Errorf("chtimes %s: no such file or directory", hdr.Name)
		}
		n.MtimeNs = boundTime(hdr.ModTime)
	}
	return t, nil
}

func (t *tree) opaqueNaive(dirComps []string, dir *node) {
	var walk func(comps []string, n *node)
	walk = func(comps []string, n *node) {
		names := make([]string, 0, len(n.children))
		for name := range n.children {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			child := n.children[name]
			sub := append(append([]string{}, comps...), name)
			if !t.unpacked[strings.Join(sub, "/")] {
				delete(n.children, name)
				continue
			}
			if child.Type == "dir" {
				walk(sub, child)
			}
		}
	}
	walk(dirComps, dir)
}

func (t *tree) create(comps []string, hdr *tar.Header, r io.Reader) error {
	var n *node
	chmod := true
	switch hdr.Typeflag {
	case tar.TypeDir:
		n = t.lookup(comps)
		if n == nil || n.Type != "dir" {
			n = t.newNode("dir")
		}
	case tar.TypeReg, tar.TypeRegA:
		n = t.newNode("reg")
		h := sha256.New()
		size, err := io.Copy(h, r)
		if err != nil {
			return err
		}
		n.Size, n.Sha256 = size, hex.EncodeToString(h.Sum(nil))
	case tar.TypeBlock, tar.TypeChar, tar.TypeFifo:
		n = t.newNode(map[byte]string{tar.TypeBlock: "blk", tar.TypeChar: "chr", tar.TypeFifo: "fifo"}[hdr.Typeflag])
		n.Major, n.Minor = hdr.Devmajor, hdr.Devminor
	case tar.TypeLink:
		pdir, base := filepath.Split(hdr.Linkname)
		ppath, err := t.rootPath(pdir)
		if err != nil {
			return err
		}
		target := t.lookup(append(ppath, split(base)...))
		if target == nil {
			return fmt.Errorf("link %s: no such file or directory", hdr.Linkname)
		}
		if target.Type == "dir" {
			return fmt.Errorf("link %s: operation not permitted", hdr.Linkname)
		}
		n, chmod = target, false // handleLChmod: the link target is looked up relative to the cwd
	case tar.TypeSymlink:
		n = t.newNode("symlink")
		n.Target = hex.EncodeToString([]byte(hdr.Linkname))
		n.Size = int64(len(hdr.Linkname))
		n.Mode, chmod = 0o777, false
	default:
		return fmt.Errorf("unhandled tar header type %d", hdr.Typeflag)
	}
	if hdr.Typeflag != tar.TypeDir || t.lookup(comps) != n {
		if err := t.put(comps, n); err != nil {
			return err
		}
	}
	n.Implicit = false
	n.UID, n.GID = hdr.Uid, hdr.Gid
	if err := setxattrs(n, hdr); err != nil {
		return err
	}
	if chmod {
		n.Mode = hdr.Mode & 0o7777
	}
	n.MtimeNs = boundTime(hdr.ModTime)
	return nil
}

type entryOut struct {
	Path string `json:"path"` // hex
	*node
}

func dump(t *tree) []entryOut {
	var out []entryOut
	var walk func(prefix string, n *node)
	walk = func(prefix string, n *node) {
		out = append(out, entryOut{Path: hex.EncodeToString([]byte(prefix)), node: n})
		names := make([]string, 0, len(n.children))
		for name := range n.children {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			p := prefix + "/" + name
			if prefix == "/" {
				p = "/" + name
			}
			walk(p, n.children[name])
		}
	}
	walk("/", t.root)
	return out
}

// writeSpec is one member for "gotar write".
type writeSpec struct {
	Name     string            `json:"name"`
	Type     string            `json:"type"`
	Mode     int64             `json:"mode"`
	UID      int               `json:"uid"`
	GID      int               `json:"gid"`
	MtimeNs  int64             `json:"mtime_ns"`
	Content  []byte            `json:"content"`
	Linkname string            `json:"linkname"`
	Xattrs   map[string]string `json:"xattrs"`
	Format   string            `json:"format"`
}

func write(in io.Reader, out io.Writer) error {
	var specs []writeSpec
	if err := json.NewDecoder(in).Decode(&specs); err != nil {
		return err
	}
	tw := tar.NewWriter(out)
	types := map[string]byte{"file": tar.TypeReg, "dir": tar.TypeDir, "symlink": tar.TypeSymlink,
		"hardlink": tar.TypeLink, "fifo": tar.TypeFifo}
	formats := map[string]tar.Format{"pax": tar.FormatPAX, "gnu": tar.FormatGNU, "ustar": tar.FormatUSTAR,
		"": tar.FormatUnknown}
	for _, s := range specs {
		hdr := &tar.Header{Name: s.Name, Typeflag: types[s.Type], Mode: s.Mode, Uid: s.UID, Gid: s.GID,
			ModTime: time.Unix(0, s.MtimeNs), Linkname: s.Linkname, Size: int64(len(s.Content)),
			Format: formats[s.Format]}
		if len(s.Xattrs) > 0 {
			hdr.PAXRecords = map[string]string{}
			for k, v := range s.Xattrs {
				hdr.PAXRecords["SCHILY.xattr."+k] = v
			}
		}
		err := tw.WriteHeader(hdr)
		if err != nil && hdr.Format != tar.FormatUnknown {
			hdr.Format = tar.FormatUnknown // the asked format cannot hold it: let Go choose
			err = tw.WriteHeader(hdr)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", s.Name, err)
		}
		if _, err := tw.Write(s.Content); err != nil {
			return err
		}
	}
	return tw.Close()
}

// segments prints, for each regular file, its size and the maximal runs of 4 KiB blocks that
// hold a non-zero byte, with the sha256 of each run: a file's contents without reading back
// its holes byte by byte.
func segments(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	type run struct {
		Offset int64  `json:"offset"`
		Length int64  `json:"length"`
		Sha256 string `json:"sha256"`
	}
	type file struct {
		Name string `json:"name"`
		Size int64  `json:"size"`
		Runs []run  `json:"runs"`
	}
	var out []file
	buf := make([]byte, 1<<20)
	zero := make([]byte, 4096)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if hdr.Typeflag != tar.TypeReg && hdr.Typeflag != tar.TypeGNUSparse {
			continue
		}
		cur := file{Name: hdr.Name, Size: hdr.Size, Runs: []run{}}
		var pos int64
		var open *run
		h := sha256.New()
		for {
			n, err := io.ReadFull(tr, buf)
			for i := 0; i < n; i += 4096 {
				end := i + 4096
				if end > n {
					end = n
				}
				blk := buf[i:end]
				if string(blk) == string(zero[:len(blk)]) {
					if open != nil {
						open.Sha256 = hex.EncodeToString(h.Sum(nil))
						cur.Runs = append(cur.Runs, *open)
						open = nil
					}
					continue
				}
				if open == nil {
					open = &run{Offset: pos + int64(i)}
					h.Reset()
				}
				h.Write(blk)
				open.Length += int64(len(blk))
			}
			pos += int64(n)
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				break
			}
			if err != nil {
				return err
			}
		}
		if open != nil {
			open.Sha256 = hex.EncodeToString(h.Sum(nil))
			cur.Runs = append(cur.Runs, *open)
		}
		out = append(out, cur)
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}

func main() {
	if len(os.Args) > 2 && os.Args[1] == "segments" {
		if err := segments(os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, "gotar segments:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "write" {
		if err := write(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "gotar write:", err)
			os.Exit(1)
		}
		return
	}
	fs := flag.NewFlagSet("apply", flag.ExitOnError)
	mode := fs.String("mode", "naive", "whiteout handling: naive or overlay")
	if len(os.Args) < 2 || os.Args[1] != "apply" {
		fmt.Fprintln(os.Stderr, "usage: gotar apply [-mode naive|overlay] FILE | gotar write")
		os.Exit(2)
	}
	_ = fs.Parse(os.Args[2:])
	f, err := os.Open(fs.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	defer f.Close()
	enc := json.NewEncoder(os.Stdout)
	t, err := apply(f, *mode)
	if err != nil {
		_ = enc.Encode(map[string]string{"error": err.Error()})
		return
	}
	_ = enc.Encode(map[string][]entryOut{"tree": dump(t)})
}
