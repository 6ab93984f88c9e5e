// Counter.java - prints "count N" every 20 ms until the file named by its argument (GO) exists,
// then "PASS counter N". A JVM maps /tmp/hsperfdata_USER/PID shared and removes it at exit
// (tests/tmpfs_maps.rs on tmpfs, tests/tmp_files.rs on a disk).
public class Counter {
    public static void main(String[] a) throws Exception {
        java.io.File go = new java.io.File(a[0]);
        long n = 0;
        while (!go.exists()) {
            System.out.println("count " + n);
            n++;
            Thread.sleep(20);
        }
        System.out.println("PASS counter " + n);
    }
}
