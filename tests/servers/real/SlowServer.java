// A JVM HTTP server for tests/tests/real_servers.rs (run as a single-file source program:
// `java SlowServer.java PORT STOP_SECONDS`).
//   GET /          answers at once
//   GET /slow?s=N  answers after N seconds (default 2)
// Its shutdown hook (run on SIGTERM) stops the server: closes the listener and waits up
// to STOP_SECONDS for the exchanges in flight; the JVM then exits with status 143.
import com.sun.net.httpserver.HttpServer;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.util.concurrent.Executors;

public class SlowServer {
    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(args[0]);
        int stopSeconds = Integer.parseInt(args[1]);
        HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", port), 64);
        server.createContext("/", exchange -> {
            String path = exchange.getRequestURI().getPath();
            String query = exchange.getRequestURI().getQuery();
            if (path.equals("/slow")) {
                double seconds = 2;
                if (query != null && query.startsWith("s=")) seconds = Double.parseDouble(query.substring(2));
                try {
                    Thread.sleep((long) (seconds * 1000));
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
            }
            byte[] body = ("ok " + path + "\n").getBytes();
            exchange.sendResponseHeaders(200, body.length);
            try (OutputStream out = exchange.getResponseBody()) {
                out.write(body);
            }
        });
        server.setExecutor(Executors.newCachedThreadPool());
        server.start();
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            System.out.println("shutdown hook: stopping");
            server.stop(stopSeconds);
            System.out.println("shutdown hook: stopped");
        }));
        System.out.println("ready " + port);
    }
}
