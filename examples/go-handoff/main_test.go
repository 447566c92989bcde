package main

import (
	"bufio"
	"bytes"
	"net"
	"syscall"
	"testing"
	"time"
)

func TestHeaderLayoutIsLittleEndianAfterTheMagic(t *testing.T) {
	b := header{kind: kindAck, field: statusRefused, id: 0x0102030405060708, buffer: 9, state: 10}.encode()
	want := []byte{'B', 'H', 'O', '1', 2, 0, 1, 0, 8, 7, 6, 5, 4, 3, 2, 1, 9, 0, 0, 0, 10, 0, 0, 0}
	if !bytes.Equal(b, want) {
		t.Fatalf("encoded %v, want %v", b, want)
	}
	h, err := decodeHeader(b)
	if err != nil || h.kind != kindAck || h.field != statusRefused || h.id != 0x0102030405060708 {
		t.Fatalf("decoded %+v, %v", h, err)
	}
}

func TestBadHeadersAreRejected(t *testing.T) {
	good := header{kind: kindConnection}.encode()
	for name, b := range map[string][]byte{
		"short":     good[:23],
		"magic":     append([]byte("BHO2"), good[4:]...),
		"flags set": append(append(append([]byte(nil), good[:5]...), 1), good[6:]...),
	} {
		if _, err := decodeHeader(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestConnectionMessagesOverTheBoundsAreRefused(t *testing.T) {
	parse := func(message []byte) bool {
		h, err := decodeHeader(message)
		if err != nil {
			t.Fatal(err)
		}
		_, ok := parseConnection(h, message)
		return ok
	}
	if !parse(connectionMessage(1, "echo", []byte("half a li"))) {
		t.Error("a valid message refused")
	}
	if parse(connectionMessage(1, "echo", make([]byte, maxBuffer+1))) {
		t.Error("a buffer over 65,536 bytes accepted")
	}
	long := connectionMessage(1, "echo", nil)
	if parse(long[:len(long)-1]) {
		t.Error("a message shorter than its lengths accepted")
	}
	withState := append(connectionMessage(1, "echo", nil), 'x')
	withState[20] = 2 // says two bytes of state, has one
	if parse(withState) {
		t.Error("a state shorter than its length accepted")
	}
}

// seqpacketPair returns both ends of an AF_UNIX SOCK_SEQPACKET pair.
func seqpacketPair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_SEQPACKET|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	a, err := unixConn(fds[0])
	if err != nil {
		t.Fatal(err)
	}
	b, err := unixConn(fds[1])
	if err != nil {
		t.Fatal(err)
	}
	return a, b
}

// serving starts svc on a loopback listener and returns a client connected
// to it, once svc has adopted the connection.
func serving(t *testing.T, svc *service) (net.Conn, *bufio.Reader) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go svc.accept("echo", l)
	client, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	_ = client.SetDeadline(time.Now().Add(10 * time.Second))
	reader := bufio.NewReader(client)
	exchange(t, client, reader, "hello\n", "hello\n")
	return client, reader
}

func exchange(t *testing.T, client net.Conn, reader *bufio.Reader, line, want string) {
	t.Helper()
	if _, err := client.Write([]byte(line)); err != nil {
		t.Fatal(err)
	}
	got, err := reader.ReadString('\n')
	if err != nil || got != want {
		t.Fatalf("sent %q, got %q (%v), want %q", line, got, err, want)
	}
}

func TestAConnectionAndItsHalfLineMoveToTheSuccessor(t *testing.T) {
	old, successor := newService("1"), newService("2")
	client, reader := serving(t, old)
	exchange(t, client, reader, "generation\n", "1\n")
	if _, err := client.Write([]byte("half a ")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // read by the old generation
	oldEnd, newEnd := seqpacketPair(t)
	go successor.receiveFrom(newEnd)

	if n := old.handOver(oldEnd, time.Now().Add(5*time.Second)); n != 1 {
		t.Fatalf("handed over %d connections, want 1", n)
	}
	// The successor adopts the connection right after its acknowledgement.
	for deadline := time.Now().Add(5 * time.Second); len(successor.snapshot()) != 1; {
		if time.Now().After(deadline) {
			t.Fatal("the successor never adopted the connection")
		}
		time.Sleep(time.Millisecond)
	}
	if len(old.snapshot()) != 0 {
		t.Fatalf("the old generation still owns %d connections", len(old.snapshot()))
	}
	exchange(t, client, reader, "line\n", "half a line\n")
	exchange(t, client, reader, "generation\n", "2\n")
}

func TestARefusedConnectionIsServedOnByTheOldGeneration(t *testing.T) {
	old, successor := newService("1"), newService("2")
	successor.stopping.Store(true) // a stopping generation takes nothing
	client, reader := serving(t, old)
	oldEnd, newEnd := seqpacketPair(t)
	go successor.receiveFrom(newEnd)

	if n := old.handOver(oldEnd, time.Now().Add(5*time.Second)); n != 0 {
		t.Fatalf("handed over %d connections, want 0", n)
	}
	exchange(t, client, reader, "generation\n", "1\n")
}

func TestWithoutAnAcknowledgementTheConnectionStaysWithTheOldGeneration(t *testing.T) {
	old := newService("1")
	client, reader := serving(t, old)
	oldEnd, newEnd := seqpacketPair(t)
	defer newEnd.Close() // a successor that never reads

	started := time.Now()
	if n := old.handOver(oldEnd, time.Now().Add(5*time.Second)); n != 0 {
		t.Fatalf("handed over %d connections, want 0", n)
	}
	if waited := time.Since(started); waited < ackPatience || waited > 3*time.Second {
		t.Errorf("waited %v for the acknowledgement", waited)
	}
	exchange(t, client, reader, "generation\n", "1\n")
	// After shutdown(SHUT_RD) on the old end, the successor's acknowledgement
	// fails: it could not have taken the connection too.
	if _, _, err := newEnd.WriteMsgUnix(header{kind: kindAck, id: 1}.encode(), nil, nil); err == nil {
		t.Error("an acknowledgement was sent after the old generation stopped waiting")
	}
}

func TestAMalformedConnectionMessageIsRefusedByItsId(t *testing.T) {
	successor := newService("2")
	oldEnd, newEnd := seqpacketPair(t)
	defer oldEnd.Close()
	go successor.receiveFrom(newEnd)
	message := connectionMessage(42, "echo", nil)
	message[5] = 1 // flags must be 0
	if _, _, err := oldEnd.WriteMsgUnix(message, nil, nil); err != nil {
		t.Fatal(err)
	}
	_ = oldEnd.SetReadDeadline(time.Now().Add(5 * time.Second))
	answer := make([]byte, 64)
	n, _, _, _, err := oldEnd.ReadMsgUnix(answer, nil)
	if err != nil {
		t.Fatal(err)
	}
	h, err := decodeHeader(answer[:n])
	if err != nil || h.kind != kindAck || h.id != 42 || h.field != statusRefused {
		t.Fatalf("answered %+v (%v), want the refusal of 42", h, err)
	}
}
