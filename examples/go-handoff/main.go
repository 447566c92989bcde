// Command go-handoff is a line-echo service for baton written with Go's
// standard library only. It shows every protocol a service speaks with the
// agent, in a language other than Rust:
//
//   - its listening sockets from LISTEN_FDS and LISTEN_FDNAMES (checking
//     LISTEN_PID and what each fd really is);
//   - READY=1 and STOPPING=1 to NOTIFY_SOCKET;
//   - connection handoff (docs/handoff.md): on a hot restart it gives every
//     open connection, with the bytes it read but did not answer yet, to the
//     next generation, so the client never sees the restart.
//
// The protocol on the socket named "echo": every line comes back as sent; the
// line "generation" is answered by the serving generation's number
// (BATON_GENERATION). Run outside baton, it binds -listen itself.
package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix(fmt.Sprintf("go-handoff[%d]: ", os.Getpid()))
	standalone := flag.String("listen", "127.0.0.1:7000",
		"address of the echo socket when the process was not started with LISTEN_FDS")
	flag.Parse()
	if err := run(*standalone); err != nil {
		log.Fatal(err)
	}
}

func run(standalone string) error {
	listeners, err := inheritedListeners()
	if err != nil {
		return err
	}
	if listeners == nil {
		l, err := net.Listen("tcp", standalone)
		if err != nil {
			return err
		}
		listeners = map[string]net.Listener{"echo": l}
	}
	if _, ok := listeners["echo"]; !ok {
		return errors.New(`no socket named "echo" in LISTEN_FDNAMES`)
	}
	for name, l := range listeners {
		if name != "echo" {
			l.Close()
			delete(listeners, name)
		}
	}

	svc := newService(envOr("BATON_GENERATION", "0"))
	channel, err := openChannel()
	if err != nil {
		return err
	}
	if channel != nil {
		// Before READY=1: the agent reads the channel when it acts on readiness.
		if err := channel.send("HANDOFF=1"); err != nil {
			return fmt.Errorf("declaring handoff: %w", err)
		}
		channel.start(svc)
	}
	for name, l := range listeners {
		go svc.accept(name, l)
	}
	if err := notify("READY=1"); err != nil {
		return fmt.Errorf("notifying readiness: %w", err)
	}
	log.Printf("generation %s ready", svc.generation)

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
	stopping := time.Now()
	drainTimeout := 30 * time.Second
	if ms, err := strconv.ParseUint(os.Getenv("BATON_DRAIN_TIMEOUT_MS"), 10, 32); err == nil {
		drainTimeout = time.Duration(ms) * time.Millisecond
	}
	_ = notify("STOPPING=1")
	svc.stopping.Store(true)
	for _, l := range listeners {
		l.Close()
	}
	if channel != nil {
		if successor := channel.takeSuccessor(); successor != nil {
			n := svc.handOver(successor, stopping.Add(drainTimeout/2))
			log.Printf("handed %d connections over", n)
			if err := channel.send(fmt.Sprintf("HANDED_OVER=%d", n)); err != nil {
				log.Printf("reporting the handoff: %v", err)
			}
		}
	}
	// Leave a little of the drain timeout so that the exit is ours, not SIGKILL.
	svc.drain(stopping.Add(drainTimeout * 9 / 10))
	return nil
}

func envOr(key, fallback string) string {
	if value, ok := os.LookupEnv(key); ok {
		return value
	}
	return fallback
}

// --- Sockets ------------------------------------------------------------------

// inheritedListeners takes fds 3.. by their LISTEN_FDNAMES names. It returns
// nil when the process was not started with LISTEN_FDS.
func inheritedListeners() (map[string]net.Listener, error) {
	count, ok := os.LookupEnv("LISTEN_FDS")
	if !ok {
		return nil, nil
	}
	// LISTEN_PID names the process the fds are for; a child that inherited
	// the environment must not take them.
	if pid := os.Getenv("LISTEN_PID"); pid != strconv.Itoa(os.Getpid()) {
		return nil, fmt.Errorf("LISTEN_PID=%s is not this process (%d)", pid, os.Getpid())
	}
	n, err := strconv.Atoi(count)
	if err != nil || n < 0 {
		return nil, fmt.Errorf("LISTEN_FDS=%q is not a count", count)
	}
	names := strings.Split(os.Getenv("LISTEN_FDNAMES"), ":")
	for _, key := range []string{"LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"} {
		os.Unsetenv(key)
	}
	listeners := make(map[string]net.Listener, n)
	for i := 0; i < n; i++ {
		fd := 3 + i
		name := fmt.Sprintf("fd%d", fd)
		if i < len(names) && names[i] != "" {
			name = names[i]
		}
		l, err := streamListener(fd, name)
		if err != nil {
			return nil, err
		}
		listeners[name] = l
	}
	return listeners, nil
}

// streamListener checks with the kernel that fd is a listening stream socket
// before trusting it, instead of believing the name.
func streamListener(fd int, name string) (net.Listener, error) {
	kind, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_TYPE)
	if err != nil {
		return nil, fmt.Errorf("socket %q (fd %d) is not a socket: %w", name, fd, err)
	}
	listening, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_ACCEPTCONN)
	if err != nil || kind != syscall.SOCK_STREAM || listening != 1 {
		return nil, fmt.Errorf("socket %q (fd %d) is not a listening stream socket", name, fd)
	}
	file := os.NewFile(uintptr(fd), name)
	defer file.Close() // net.FileListener keeps a duplicate, close-on-exec
	return net.FileListener(file)
}

// notify sends one datagram to NOTIFY_SOCKET; outside baton there is none.
func notify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	// Go reads a leading '@' as an abstract address, as systemd does.
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Write([]byte(state))
	return err
}

// --- The echo service -----------------------------------------------------------

// A line longer than this closes its connection: the buffer would not fit
// a handoff message anyway.
const maxLine = 64 * 1024

type service struct {
	generation string
	stopping   atomic.Bool

	// The sessions this process owns: open, and not handed over.
	mutex    sync.Mutex
	sessions map[*session]struct{}
}

// A session is one connection and the goroutine serving it. Only that
// goroutine reads or writes the connection; a handoff asks it to stop at a
// line boundary and takes back what it read of the next line.
type session struct {
	conn     net.Conn
	listener string
	pausing  atomic.Bool
	// The serving goroutine's last word when it ends: what it read and did
	// not answer, and whether it closed the connection.
	stopped chan stopped
}

type stopped struct {
	pending []byte
	closed  bool
}

func newService(generation string) *service {
	return &service{generation: generation, sessions: make(map[*session]struct{})}
}

func (svc *service) accept(name string, l net.Listener) {
	for {
		conn, err := l.Accept()
		if err != nil {
			if !svc.stopping.Load() {
				log.Printf("accepting on %q: %v", name, err)
			}
			return
		}
		svc.serve(svc.adopt(conn, name), nil)
	}
}

func (svc *service) adopt(conn net.Conn, listener string) *session {
	s := &session{conn: conn, listener: listener, stopped: make(chan stopped, 1)}
	svc.mutex.Lock()
	svc.sessions[s] = struct{}{}
	svc.mutex.Unlock()
	return s
}

// release forgets a session that is closed or now belongs to the successor.
func (svc *service) release(s *session) {
	svc.mutex.Lock()
	delete(svc.sessions, s)
	svc.mutex.Unlock()
}

func (svc *service) snapshot() []*session {
	svc.mutex.Lock()
	defer svc.mutex.Unlock()
	sessions := make([]*session, 0, len(svc.sessions))
	for s := range svc.sessions {
		sessions = append(sessions, s)
	}
	return sessions
}

// serve answers s from pending first, then from the socket, in a goroutine
// of its own.
func (svc *service) serve(s *session, pending []byte) {
	go func() {
		pending, closed := svc.echo(s, pending)
		if closed {
			s.conn.Close()
			svc.release(s)
		}
		s.stopped <- stopped{pending: pending, closed: closed}
	}()
}

// echo returns when the connection is done (closed true) or when asked to
// pause, with the bytes of the line it has not answered yet.
func (svc *service) echo(s *session, pending []byte) ([]byte, bool) {
	chunk := make([]byte, 16*1024)
	for {
		for {
			end := bytes.IndexByte(pending, '\n')
			if end < 0 {
				break
			}
			line := pending[:end+1]
			answer := line
			if string(bytes.TrimRight(line, "\r\n")) == "generation" {
				answer = []byte(svc.generation + "\n")
			}
			if _, err := s.conn.Write(answer); err != nil {
				return nil, true
			}
			pending = pending[end+1:]
		}
		if len(pending) > maxLine {
			return nil, true
		}
		pending = append([]byte(nil), pending...)
		if s.pausing.Load() {
			return pending, false
		}
		n, err := s.conn.Read(chunk)
		pending = append(pending, chunk[:n]...)
		if err != nil && n == 0 {
			if errors.Is(err, os.ErrDeadlineExceeded) && s.pausing.Load() {
				continue
			}
			return nil, true
		}
	}
}

// pause stops the serving goroutine at a line boundary and returns the
// bytes of the line it had begun to read. ok is false when the connection
// closed meanwhile or the goroutine did not stop in time (it is then resumed
// as soon as it stops).
func (svc *service) pause(s *session, patience time.Duration) (pending []byte, ok bool) {
	s.pausing.Store(true)
	// A deadline in the past wakes a Read that is waiting, and makes the next
	// one return at once: the data stays in the socket for the successor.
	_ = s.conn.SetReadDeadline(time.Unix(1, 0))
	timer := time.NewTimer(patience)
	defer timer.Stop()
	select {
	case last := <-s.stopped:
		return last.pending, !last.closed
	case <-timer.C:
		go func() {
			if last := <-s.stopped; !last.closed {
				svc.resume(s, last.pending)
			}
		}()
		return nil, false
	}
}

func (svc *service) resume(s *session, pending []byte) {
	s.pausing.Store(false)
	_ = s.conn.SetReadDeadline(time.Time{})
	svc.serve(s, pending)
}

// drain serves the connections it still owns until their clients close them
// or the deadline passes.
func (svc *service) drain(deadline time.Time) {
	for time.Now().Before(deadline) {
		if len(svc.snapshot()) == 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	remaining := svc.snapshot()
	log.Printf("drain timeout: closing %d connections", len(remaining))
	for _, s := range remaining {
		s.conn.Close()
	}
}

// --- The generation's channel ---------------------------------------------------

// channel is the SOCK_SEQPACKET socket to the agent named by
// BATON_CHANNEL_FD.
type channel struct {
	conn *net.UnixConn
	raw  syscall.RawConn

	// Held while a message is taken from the socket and acted on, so that
	// whoever holds it next sees every message received so far in effect.
	mutex     sync.Mutex
	successor *net.UnixConn
	svc       *service
}

func openChannel() (*channel, error) {
	value, ok := os.LookupEnv("BATON_CHANNEL_FD")
	if !ok {
		return nil, nil
	}
	fd, err := strconv.Atoi(value)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("BATON_CHANNEL_FD=%q is not a file descriptor", value)
	}
	if kind, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_TYPE); err != nil || kind != syscall.SOCK_SEQPACKET {
		return nil, fmt.Errorf("BATON_CHANNEL_FD=%d is not a SOCK_SEQPACKET socket", fd)
	}
	// The channel speaks for this generation: a program it starts must not
	// inherit it (the duplicate net.FileConn keeps is close-on-exec).
	os.Unsetenv("BATON_CHANNEL_FD")
	conn, err := unixConn(fd)
	if err != nil {
		return nil, fmt.Errorf("BATON_CHANNEL_FD=%d: %w", fd, err)
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	return &channel{conn: conn, raw: raw}, nil
}

func (c *channel) send(message string) error {
	_, err := c.conn.Write([]byte(message))
	return err
}

// start reads the channel for as long as it is open.
func (c *channel) start(svc *service) {
	c.svc = svc
	go func() {
		_ = c.raw.Read(func(fd uintptr) bool {
			c.mutex.Lock()
			defer c.mutex.Unlock()
			return c.receiveQueued(int(fd))
		})
	}()
}

// takeSuccessor first acts on every message already queued: the agent sends
// SUCCESSOR= before the stop signal, so it is in the queue by now even if
// the reading goroutine has not woken up yet.
func (c *channel) takeSuccessor() *net.UnixConn {
	_ = c.raw.Control(func(fd uintptr) {
		c.mutex.Lock()
		defer c.mutex.Unlock()
		c.receiveQueued(int(fd))
	})
	c.mutex.Lock()
	defer c.mutex.Unlock()
	successor := c.successor
	c.successor = nil
	return successor
}

// receiveQueued acts on every message in the socket without waiting, and
// says whether the channel is finished (the agent closed it, or it failed).
// The caller holds c.mutex.
func (c *channel) receiveQueued(fd int) bool {
	buffer := make([]byte, 4096)
	oob := make([]byte, syscall.CmsgSpace(4*4))
	for {
		n, oobn, _, _, err := syscall.Recvmsg(fd, buffer, oob, syscall.MSG_DONTWAIT|syscall.MSG_CMSG_CLOEXEC)
		if err == syscall.EINTR {
			continue
		}
		if err == syscall.EAGAIN {
			return false
		}
		if err != nil || n == 0 {
			return true
		}
		c.handle(string(buffer[:n]), receivedFds(oob[:oobn]))
	}
}

func (c *channel) handle(message string, fds []int) {
	keys := map[string]string{}
	for _, line := range strings.Split(message, "\n") {
		if key, value, ok := strings.Cut(line, "="); ok {
			keys[key] = value
		}
	}
	var pair *net.UnixConn
	_, predecessor := keys["PREDECESSOR"]
	_, successor := keys["SUCCESSOR"]
	if (predecessor || successor) && len(fds) == 1 {
		conn, err := unixConn(fds[0])
		if err != nil {
			log.Printf("the handoff socket in %q: %v", message, err)
		}
		pair = conn
	} else {
		closeAll(fds)
	}
	switch {
	case pair == nil:
	case predecessor:
		log.Printf("taking connections from generation %s", keys["PREDECESSOR"])
		go c.svc.receiveFrom(pair)
	case successor:
		if c.successor != nil {
			c.successor.Close()
		}
		c.successor = pair
	}
}

func receivedFds(oob []byte) []int {
	messages, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var fds []int
	for i := range messages {
		if rights, err := syscall.ParseUnixRights(&messages[i]); err == nil {
			fds = append(fds, rights...)
		}
	}
	return fds
}

func closeAll(fds []int) {
	for _, fd := range fds {
		syscall.Close(fd)
	}
}

// unixConn wraps fd, which it closes, as a *net.UnixConn.
func unixConn(fd int) (*net.UnixConn, error) {
	conn, err := fileConn(fd)
	if err != nil {
		return nil, err
	}
	unix, ok := conn.(*net.UnixConn)
	if !ok {
		conn.Close()
		return nil, fmt.Errorf("fd %d is not a unix socket", fd)
	}
	return unix, nil
}

// fileConn wraps fd, which it closes, as a net.Conn on the runtime's poller.
func fileConn(fd int) (net.Conn, error) {
	file := os.NewFile(uintptr(fd), "")
	defer file.Close()
	return net.FileConn(file)
}

// --- The handoff pair (docs/handoff.md) -----------------------------------------

const (
	headerSize     = 24
	kindConnection = 1
	kindAck        = 2
	kindEnd        = 3
	statusTaken    = 0
	statusRefused  = 1
	maxName        = 255
	maxBuffer      = 65536
	maxState       = 16384
	maxMessage     = headerSize + maxName + maxBuffer + maxState
	// How long the old generation waits for an acknowledgement.
	ackPatience = time.Second
)

var magic = [4]byte{'B', 'H', 'O', '1'}

type header struct {
	kind   byte
	field  uint16 // a connection's name length, an acknowledgement's status
	id     uint64
	buffer uint32
	state  uint32
}

func (h header) encode() []byte {
	b := make([]byte, headerSize)
	copy(b, magic[:])
	b[4] = h.kind
	b[5] = 0
	binary.LittleEndian.PutUint16(b[6:], h.field)
	binary.LittleEndian.PutUint64(b[8:], h.id)
	binary.LittleEndian.PutUint32(b[16:], h.buffer)
	binary.LittleEndian.PutUint32(b[20:], h.state)
	return b
}

var errBadHeader = errors.New("bad handoff header")

func decodeHeader(b []byte) (header, error) {
	if len(b) < headerSize || !bytes.Equal(b[:4], magic[:]) || b[5] != 0 {
		return header{}, errBadHeader
	}
	return header{
		kind:   b[4],
		field:  binary.LittleEndian.Uint16(b[6:]),
		id:     binary.LittleEndian.Uint64(b[8:]),
		buffer: binary.LittleEndian.Uint32(b[16:]),
		state:  binary.LittleEndian.Uint32(b[20:]),
	}, nil
}

// connectionMessage is a connection message without its fd.
func connectionMessage(id uint64, name string, buffer []byte) []byte {
	h := header{kind: kindConnection, field: uint16(len(name)), id: id, buffer: uint32(len(buffer))}
	message := append(h.encode(), name...)
	return append(message, buffer...)
}

// A received connection message: the listener's name and the unanswered
// bytes (the state blob is the application's; this one sends none).
type offered struct {
	id     uint64
	name   string
	buffer []byte
}

// parseConnection checks a connection message against the protocol's bounds.
func parseConnection(h header, message []byte) (offered, bool) {
	body := message[headerSize:]
	nameLen, bufferLen, stateLen := int(h.field), int(h.buffer), int(h.state)
	if nameLen > maxName || bufferLen > maxBuffer || stateLen > maxState ||
		len(body) != nameLen+bufferLen+stateLen {
		return offered{}, false
	}
	return offered{
		id:     h.id,
		name:   string(body[:nameLen]),
		buffer: append([]byte(nil), body[nameLen:nameLen+bufferLen]...),
	}, true
}

// receiveFrom takes connections from the predecessor until it sends end or
// goes away.
func (svc *service) receiveFrom(pair *net.UnixConn) {
	defer pair.Close()
	message := make([]byte, maxMessage+1)
	oob := make([]byte, syscall.CmsgSpace(4*4))
	taken := 0
	for {
		n, oobn, flags, _, err := pair.ReadMsgUnix(message, oob)
		if err != nil || n == 0 {
			break
		}
		fds := receivedFds(oob[:oobn])
		h, err := decodeHeader(message[:n])
		if err != nil && n >= headerSize && bytes.Equal(message[:4], magic[:]) {
			// Ours but malformed (flags set): refuse it by its id, so the
			// old generation need not wait for an acknowledgement.
			h, err = header{kind: kindConnection, id: binary.LittleEndian.Uint64(message[8:])}, nil
			closeAll(fds)
			fds = nil
		}
		if err != nil || h.kind != kindConnection {
			closeAll(fds)
			if err == nil && h.kind == kindEnd {
				break
			}
			continue
		}
		connection, ok := parseConnection(h, message[:n])
		ok = ok && flags&(syscall.MSG_TRUNC|syscall.MSG_CTRUNC) == 0 && len(fds) == 1 &&
			connection.name == "echo" && !svc.stopping.Load()
		var conn net.Conn
		if ok {
			conn, err = fileConn(fds[0])
			ok = err == nil
		} else {
			closeAll(fds)
		}
		status := uint16(statusTaken)
		if !ok {
			status = statusRefused
		}
		ack := header{kind: kindAck, field: status, id: h.id}.encode()
		_, _, err = pair.WriteMsgUnix(ack, nil, nil)
		if conn == nil {
			continue
		}
		// The connection is ours if and only if the acknowledgement went out.
		if err != nil {
			conn.Close()
			continue
		}
		taken++
		svc.serve(svc.adopt(conn, connection.name), connection.buffer)
	}
	log.Printf("took %d connections from the predecessor", taken)
}

type ack struct {
	id     uint64
	status uint16
}

// handOver offers every connection to the successor until offerUntil and
// returns how many it took. The rest stay here.
func (svc *service) handOver(pair *net.UnixConn, offerUntil time.Time) int {
	acks := make(chan ack, 1024)
	go readAcks(pair, acks)
	type offer struct {
		s          *session
		pending    []byte
		patientTil time.Time
	}
	outstanding := map[uint64]offer{}
	handedOver := 0
	settle := func(a ack) {
		o, ok := outstanding[a.id]
		if !ok {
			return
		}
		delete(outstanding, a.id)
		if a.status == statusTaken {
			o.s.conn.Close()
			svc.release(o.s)
			handedOver++
		} else {
			svc.resume(o.s, o.pending)
		}
	}
	// One acknowledgement overdue ends the offering: the shutdown that
	// settles it acts on the whole pair.
	overdue := func() bool {
		now := time.Now()
		for _, o := range outstanding {
			if now.After(o.patientTil) {
				return true
			}
		}
		return false
	}
	// The largest connection message must fit the send buffer.
	_ = pair.SetWriteBuffer(2 * maxMessage)
	var id uint64
	for _, s := range svc.snapshot() {
		// Acknowledgements that came meanwhile: each is waited for only so long.
		for settled := false; !settled; {
			select {
			case a, open := <-acks:
				if open {
					settle(a)
				} else {
					settled = true
				}
			default:
				settled = true
			}
		}
		if !time.Now().Before(offerUntil) || overdue() {
			break
		}
		patience := time.Until(offerUntil)
		if patience > ackPatience {
			patience = ackPatience
		}
		pending, ok := svc.pause(s, patience)
		if !ok {
			continue
		}
		if len(pending) > maxBuffer || len(s.listener) > maxName {
			svc.resume(s, pending)
			continue
		}
		id++
		// A full queue (few datagrams fit) waits for room, not forever.
		_ = pair.SetWriteDeadline(time.Now().Add(patience))
		if err := sendConnection(pair, connectionMessage(id, s.listener, pending), s.conn); err != nil {
			log.Printf("offering a connection: %v", err)
			svc.resume(s, pending)
			break
		}
		outstanding[id] = offer{s: s, pending: pending, patientTil: time.Now().Add(ackPatience)}
	}

	eof := false
waiting:
	for len(outstanding) > 0 {
		until := offerUntil
		for _, o := range outstanding {
			if o.patientTil.Before(until) {
				until = o.patientTil
			}
		}
		timer := time.NewTimer(time.Until(until))
		select {
		case a, open := <-acks:
			timer.Stop()
			if !open {
				eof = true
				break waiting
			}
			settle(a)
		case <-timer.C:
			break waiting
		}
	}
	if len(outstanding) > 0 {
		if !eof {
			// From now on the successor's acknowledgements fail, so each one
			// still queued is a connection it owns, and no other is.
			if err := pair.CloseRead(); err != nil {
				log.Printf("shutting the handoff socket for reading: %v", err)
			}
			for a := range acks {
				settle(a)
			}
		}
		for _, o := range outstanding {
			svc.resume(o.s, o.pending)
		}
	}
	end := header{kind: kindEnd}.encode()
	_ = pair.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	_, _, _ = pair.WriteMsgUnix(end, nil, nil)
	pair.Close()
	return handedOver
}

// readAcks passes on acknowledgements until the pair ends, then closes acks.
func readAcks(pair *net.UnixConn, acks chan<- ack) {
	defer close(acks)
	message := make([]byte, maxMessage+1)
	oob := make([]byte, syscall.CmsgSpace(4*4))
	for {
		n, oobn, _, _, err := pair.ReadMsgUnix(message, oob)
		if err != nil || n == 0 {
			return
		}
		closeAll(receivedFds(oob[:oobn]))
		if h, err := decodeHeader(message[:n]); err == nil && h.kind == kindAck {
			acks <- ack{id: h.id, status: h.field}
		}
	}
}

// sendConnection sends message with the connection's fd; the successor gets
// a duplicate, this process keeps its own until the acknowledgement.
func sendConnection(pair *net.UnixConn, message []byte, conn net.Conn) error {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return errors.New("the connection has no file descriptor")
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var sendErr error
	err = raw.Control(func(fd uintptr) {
		_, _, sendErr = pair.WriteMsgUnix(message, syscall.UnixRights(int(fd)), nil)
	})
	if err != nil {
		return err
	}
	return sendErr
}
