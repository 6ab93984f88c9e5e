// NioServer.java - Java NIO under checkpoint/restart (issue 12): a ServerSocketChannel on
// 127.0.0.1 (port chosen by the kernel) with a Selector, answering each line a client sends
// with "count N LINE"; N is a counter the selector loop advances every 20 ms. Prints "port P"
// and READY; when $CR_TEST_GO exists it prints "PASS NioServer N" and exits 0.
import java.io.File;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.SelectionKey;
import java.nio.channels.Selector;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;

public class NioServer {
    public static void main(String[] args) throws Exception {
        File go = new File(System.getenv("CR_TEST_GO"));
        Selector sel = Selector.open();
        ServerSocketChannel srv = ServerSocketChannel.open();
        srv.bind(new InetSocketAddress("127.0.0.1", 0));
        srv.configureBlocking(false);
        srv.register(sel, SelectionKey.OP_ACCEPT);
        System.out.println("port " + ((InetSocketAddress) srv.getLocalAddress()).getPort());
        System.out.println("READY");
        System.out.flush();
        long count = 0;
        long next = System.nanoTime();
        while (!go.exists()) {
            sel.select(20);
            if (System.nanoTime() >= next) {
                count++;
                next += 20_000_000L;
            }
            for (SelectionKey k : sel.selectedKeys()) {
                if (k.isAcceptable()) {
                    SocketChannel c = srv.accept();
                    if (c != null) {
                        c.configureBlocking(false);
                        c.register(sel, SelectionKey.OP_READ, ByteBuffer.allocate(256));
                    }
                } else if (k.isReadable()) {
                    SocketChannel c = (SocketChannel) k.channel();
                    try {
                        serve(c, (ByteBuffer) k.attachment(), count);
                    } catch (IOException e) {
                        // A client connection open at the checkpoint comes back reset (as any
                        // server sees a peer reset): drop it and go on serving the others.
                        k.cancel();
                        c.close();
                    }
                }
            }
            sel.selectedKeys().clear();
        }
        System.out.println("PASS NioServer " + count);
        System.out.flush();
        System.exit(0);
    }

    /** Reads what the client sent; answers each full line; closes on end of file. */
    static void serve(SocketChannel c, ByteBuffer buf, long count) throws IOException {
        if (c.read(buf) < 0) {
            throw new IOException("end of file");
        }
        String s = new String(buf.array(), 0, buf.position(), StandardCharsets.UTF_8);
        int nl = s.indexOf('\n');
        if (nl >= 0) {
            String reply = "count " + count + " " + s.substring(0, nl) + "\n";
            c.write(ByteBuffer.wrap(reply.getBytes(StandardCharsets.UTF_8)));
            buf.clear();
        }
    }
}
